"""Command-line flags of the Easy Diffuser extension (the webui calls preload(parser) before parsing)."""

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--easy-diffuser-model",
        type=str,
        default=None,
        help="Easy Diffuser: CLIP model, overriding the setting: Auto, ViT-L-14/openai, ViT-H-14/laion2b_s32b_b79k, "
        "ViT-bigG-14/laion2b_s39b_b160k, shapes-demo, a model folder or a checkpoint file",
    )
    parser.add_argument(
        "--easy-diffuser-model-path",
        type=str,
        default=None,
        help="Easy Diffuser: folder for CLIP weights and the tag-embedding cache (default: models/easy_diffuser)",
    )
