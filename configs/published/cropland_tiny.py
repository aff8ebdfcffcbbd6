# A CPU-sized variant of cropland_mapping.py through the release's `_base_` inheritance: dicts
# merge key by key, so only the changed widths are written. Same 32 frames: every decoder width
# is 8 * 16 = 128 (stage channels x their frames, as in the base config).
_base_ = ['cropland_mapping.py']

model = dict(
    encoders=dict(encoders_cfg=dict(S2=dict(
        patch_emd_cfg=dict(embed_dim=16),
        backbone_cfg=dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]),
        init_cfg=None,
    ))),
    neck=dict(embed_dim=128, in_fusion_key_list=(dict(S2=128), dict(S2=128), dict(S2=128))),
    head=dict(embed_dim=128),
)
