"""The training config schema: every section and key with its default; a key's type is its default's.

``model:`` is validated by :func:`oneflow_posmlp.models.resolve_model_config` (its keys mirror the official
PosMLP keyword arguments). Keys whose default is ``None`` accept a value of the type in ``NULLABLE``.
The defaults are the official PosMLP-T ImageNet recipe (Zhicaiwww/PosMLP config/PosMLP_T.yaml).
"""

DEFAULTS = {
    "model": {"name": "posmlp_t"},
    "data": {
        "root": None,            # ImageFolder root holding <train_split>/<class>/* and <val_split>/<class>/*
        "train_split": "train",
        "val_split": "val",
        "demo": False,           # generate the embedded demo data set at `root` when it is missing
        "synthetic": False,      # random tensors instead of images (benchmarks)
        "synthetic_size": 1024,  # images per synthetic epoch
        "num_workers": 4,
        "limit_train_batches": 0,  # > 0: stop each epoch after this many batches (smoke runs)
    },
    "aug": {
        "auto_augment": "rand-m6-n3-mstd1.0-inc1",
        "color_jitter": 0.4,
        "crop_pct": 0.9,
        "train_interpolation": "random",
        "interpolation": "bicubic",
        "hflip": 0.5,
        "scale": [0.08, 1.0],
        "ratio": [0.67, 1.5],
        "reprob": 0.0,
        "remode": "pixel",
        "recount": 3,
        "mixup": 0.5,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
        "smoothing": 0.1,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "train": {
        "epochs": 300,
        "batch_size": 512,       # global batch (all ranks together)
        "lr": 2.0e-3,            # at lr_base_batch; scaled linearly to batch_size
        "lr_base_batch": 512,
        "min_lr": 1.0e-6,
        "warmup_epochs": 10,
        "warmup_lr": 1.0e-5,
        "optimizer": "adamw",
        "opt_eps": 1.0e-5,
        "opt_betas": [0.9, 0.999],
        "weight_decay": 0.067,
        "clip_grad": 1.0,        # max global grad norm; 0 disables
        "grad_accum_steps": 1,
        "amp": False,            # CUDA only: autocast + dynamic loss scaling
        "ema": True,
        "ema_decay": 0.99992,
        "seed": 42,
        "graph": False,          # nn.Graph-compiled steps (needs issue #4's graphs); eager otherwise
        "log_interval": 50,
        "eval_interval": 1,      # epochs between evaluations
    },
    "output": {
        "dir": "output/posmlp",
        "save_every_steps": 0,   # > 0: also write `last` every N optimizer steps
    },
    "dist": {
        "device": "cpu",         # cpu | cuda
        "data_parallel": 0,      # 0: all ranks
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
    },
    "log": {
        "tensorboard": True,
        "csv": True,
        "progress": True,
    },
}

NULLABLE = {("data", "root"): str}

CHOICES = {
    ("train", "optimizer"): ("adamw",),
    ("aug", "mixup_mode"): ("batch",),  # flowvision 0.2.1's elem/pair modes use np.bool, gone in numpy >= 1.24
    ("dist", "device"): ("cpu", "cuda"),
    ("aug", "remode"): ("pixel", "rand", "const"),
}
