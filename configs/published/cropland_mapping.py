# AgriFM cropland mapping in the published release's config format (written for agrifm).
#
# The model is the published one: Video Swin encoder (embed 128, depths 2/2/18/2) on 32 Sentinel-2
# frames of 256 x 256 pixels, 'cat' temporal fusion and the multi-level fusion decoder.
# agrifm reads this file without executing it (agrifm.compat.load_official_config); the
# release's own tools read it too. Weights: put the release's AgriFM.pth (pre-trained encoder)
# at `pretrained` to fine-tune from it, or convert a fine-tuned checkpoint with
#   agrifm convert configs/published/cropland_mapping.py CKPT.pth model.safetensors
custom_imports = dict(imports=['AgriFM'], allow_failed_imports=False)

img_size = 256
num_frames = 32
num_classes = 2
class_names = ['other', 'cropland']
encoder_dim = 128          # patch embedding width; stage i has encoder_dim * 2**i channels
decoder_dim = 1024         # = 8 * encoder_dim * (frames left after three temporal halvings: 32 / 4 / 8 = 1)
pretrained = 'weights/AgriFM.pth'
data_root = 'data/cropland'
data_list = data_root + '/data_list'

# Per-band z-score statistics of the released S2 weights, bands B02 B03 B04 B08 B05 B06 B07 B8A B11 B12.
mean = dict(S2=[4179.19, 4065.91, 3957.27, 5207.45, 4327.12, 4873.16, 5049.16, 5111.08, 3056.86, 2490.97])
std = dict(S2=[4041.52, 3691.00, 3629.33, 2973.52, 3569.73, 3085.92, 2937.56, 2806.04, 1808.30, 1694.20])

swin = dict(
    type='SwinTransformer3D', pretrained=None, pretrained2d=False,
    patch_size=(4, 2, 2), embed_dim=encoder_dim, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
    window_size=(8, 7, 7), out_indices=(0, 1, 2, 3), mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
    drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2, patch_norm=False, frozen_stages=-1,
    use_checkpoint=False, downsample_steps=((2, 2, 2),) * 4, feature_fusion='cat', mean_frame_down=True,
)

model = dict(
    type='MultiUnifiedModel',
    encoders=dict(
        type='MultiModalEncoder',
        encoders_cfg=dict(
            S2=dict(
                type='PretrainingSwinTransformer3DEncoder',
                patch_emd_cfg=dict(type='SwinPatchEmbed3D', patch_size=(4, 2, 2), in_chans=10, embed_dim=encoder_dim),
                backbone_cfg=swin,
                init_cfg=dict(type='Pretrained', checkpoint=pretrained),
            ),
        ),
    ),
    neck=dict(
        type='MultiFusionNeck',
        embed_dim=decoder_dim,
        in_feature_key=('S2',),
        feature_size=(img_size // 16, img_size // 16),
        out_size=(img_size, img_size),
        # widths of features_list[2], [1], [0]: stage channels x their frames (512 x 2, 256 x 4, 128 x 8)
        in_fusion_key_list=(dict(S2=1024), dict(S2=1024), dict(S2=1024)),
    ),
    head=dict(type='CropFCNHead', num_classes=num_classes, embed_dim=decoder_dim, loss_model=dict(type='CropCEloss')),
)

optimizer = dict(type='AdamW', lr=6e-5, weight_decay=5e-4)
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=50, val_interval=1)
