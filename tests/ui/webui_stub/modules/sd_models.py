"""Stand-in for modules/sd_models.py: model_data.sd_model is the loaded checkpoint (None if none), and
checkpoints_list the checkpoint files found in models/Stable-diffusion (title -> CheckpointInfo)."""


class SdModelData:
    def __init__(self):
        self.sd_model = None


model_data = SdModelData()
checkpoints_list: dict = {}
