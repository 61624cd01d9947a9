"""A Stable Diffusion 1.5 checkpoint of random weights in the published layout and real sizes (2.1 GB in fp16), for
starting a real webui with a checkpoint where none can be downloaded: Check, Refine and calibration then generate
through its own txt2img (noise, but real code paths and memory). Not collected by pytest; docs/hosts.md says when.

    HOST_PYTHON tests/ui/random_sd15.py WEBUI_FOLDER WEBUI_FOLDER/models/Stable-diffusion/random-sd15.safetensors

Run it with the webui's own Python: it builds the networks from the webui's code and configuration (LDM's UNet and
VAE from repositories/stable-diffusion-stability-ai, configs/v1-inference.yaml; the text encoder from
transformers and ldm_patched/modules/sd1_clip_config.json, as Forge Classic and reForge ship it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(webui: Path, out: Path) -> None:
    import torch
    import transformers
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    sys.path.insert(0, str(webui / "repositories" / "stable-diffusion-stability-ai"))
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    config = OmegaConf.load(webui / "configs" / "v1-inference.yaml").model.params
    unet_config = OmegaConf.to_container(config.unet_config.params)
    unet_config.pop("use_checkpoint", None)  # gradient checkpointing, for training
    vae_config = OmegaConf.to_container(config.first_stage_config.params)
    text_config = json.loads((webui / "ldm_patched" / "modules" / "sd1_clip_config.json").read_text())
    text_config.pop("architectures", None)
    parts = {
        "model.diffusion_model.": UNetModel(**unet_config),
        "first_stage_model.": AutoencoderKL(
            vae_config["ddconfig"], {"target": "torch.nn.Identity"}, vae_config["embed_dim"]
        ),
        "cond_stage_model.transformer.": transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config)),
    }
    state = {
        prefix + name: tensor.to(torch.float16).contiguous()
        for prefix, network in parts.items()
        for name, tensor in network.state_dict().items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    print(f"{out}: {len(state)} tensors, {sum(t.numel() for t in state.values()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
