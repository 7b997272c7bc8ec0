# UperNet 160k on ADE20K 512x512; a per-model file sets backbone.model_name and the heads' in_channels.
_base_ = ["./upernet_vizoo.py", "./ade20k.py", "./schedule_160k.py", "./runtime.py"]
