# A plain (single-stride) backbone: four blocks' stride-16 maps, rescaled to strides 4-32 by a learned feature pyramid
# (mmseg's Feature2Pyramid: deconvolutions up, max-pooling down), as Vim's official UperNet does (seg/backbone/vim.py).
_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="vim_tiny",
        out_indices=(5, 11, 17, 23),
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth"),
    ),
    neck=dict(
        type="Feature2Pyramid", embed_dim=192, rescales=[4, 2, 1, 0.5], norm_cfg=dict(type="SyncBN", requires_grad=True)
    ),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=192),
    auxiliary_head=dict(in_channels=192),
)
