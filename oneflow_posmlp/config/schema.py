"""The config schema: every section and key with its default. A key's type is its default's type
(an int default also accepts no float, a float default accepts ints, a list default needs a list); keys
whose default is ``None`` accept ``None`` or the type in ``NULLABLE``. ``CHOICES``, ``RANGES`` and
``LENGTHS`` restrict values further (``validate.py`` applies them). docs/configuration.md describes every key.

The ``model:`` section's keys are :data:`MODEL_DEFAULTS` (the official PosMLP keyword arguments); a config's
``model:`` names a registry entry (``model.py``: ``name``) whose values the other keys override, and loads as
the complete keyword set (:func:`oneflow_posmlp.config.model.resolve_model_config`).
The training defaults are the official PosMLP-T ImageNet recipe (Zhicaiwww/PosMLP config/PosMLP_T.yaml), except
``train.schedule_unit``, which defaults to ``update`` (the port's original per-update schedule, kept by the demo
config); the official configs set ``epoch``, the official per-epoch schedule.
"""
import math

# The model section: the official PosMLP(...) keyword arguments, PosMLP-T's values (docs/model.md).
MODEL_DEFAULTS = dict(
    img_size=[224, 224],     # [height, width]; an int means a square
    in_chans=3,
    embed_dims=[96, 192, 384, 768],  # per level (PER_LEVEL: a single number is repeated for every level)
    depths=[2, 2, 18, 2],
    win_size=[14, 14, 14, 7],
    gamma=[8, 16, 32, 64],   # PoSGU channel groups
    mlp_ratio=[4, 4, 4, 2],
    num_levels=4,
    num_classes=1000,        # 0: no classifier (features)
    quadratic=True,          # GQPE (true) or LRPE (false)
    pos_only=True,
    generalized=True,
    symmetric=True,
    absolute_bias=True,
    stem_norm="BN",
    downsample_norm="LN",
    shift=False,             # shifted windows
    chunks=2,                # gated-unit split: 1 or 2 for PoSGU, >= 2 for the SGU baseline
    drop_rate=0.0,
    drop_path_rate=0.1,
    gate_unit="posgu",
    pool_layer="conv",
)

PER_LEVEL = ("embed_dims", "depths", "win_size", "gamma", "mlp_ratio")

DEFAULTS = {
    "model": {"name": "posmlp_t"},
    "data": {
        "root": None,            # ImageFolder root holding <train_split>/<class>/* and <val_split>/<class>/*
        "format": "folder",      # folder (ImageFolder) | shards (tar shards + index of tools/make_shards.py)
        "decode": "full",        # full | draft: JPEG training crops decoded reduced (Image.draft) when >= 2x the output
        "train_split": "train",
        "val_split": "val",
        "demo": False,           # generate the embedded demo data set at `root` when it is missing
        "demo_train_per_class": 300,  # demo set: training images per class
        "demo_val_per_class": 75,     # demo set: validation images per class
        "demo_image_size": 40,        # demo set: JPEG side in pixels
        "synthetic": False,      # random tensors instead of images (benchmarks)
        "synthetic_size": 1024,  # images per synthetic epoch
        "num_workers": 4,        # DataLoader worker processes per rank (0: load in the training process)
        "limit_train_batches": 0,  # > 0: stop each epoch after this many batches (smoke runs)
    },
    "aug": {
        "auto_augment": "rand-m6-n3-mstd1.0-inc1",  # timm string; "" disables (then color_jitter applies)
        "color_jitter": 0.4,     # only used when auto_augment is "" (as in timm)
        "crop_pct": 0.9,         # eval: resize to img_size / crop_pct, centre-crop img_size
        "train_interpolation": "random",  # random = bilinear or bicubic per image
        "interpolation": "bicubic",       # eval resize
        "hflip": 0.5,
        "vflip": 0.0,
        "scale": [0.08, 1.0],    # RandomResizedCrop area range
        "ratio": [0.67, 1.5],    # RandomResizedCrop aspect range
        "reprob": 0.0,           # RandomErasing probability
        "remode": "pixel",
        "recount": 3,
        "mixup": 0.5,            # Mixup alpha (0: off)
        "cutmix": 1.0,           # CutMix alpha (0: off)
        "mixup_prob": 1.0,       # probability of mixing a batch
        "mixup_switch_prob": 0.5,  # probability of CutMix instead of Mixup when both are on
        "mixup_mode": "batch",
        "smoothing": 0.1,        # label smoothing
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "train": {
        "epochs": 300,
        "batch_size": 512,       # GLOBAL batch (all data-parallel ranks and accumulation steps together)
        "lr": 2.0e-3,            # peak lr at lr_base_batch; scaled linearly to batch_size (see scaled_lr)
        "lr_base_batch": 512,
        "min_lr": 1.0e-6,        # cosine schedule floor
        "warmup_epochs": 10,
        "warmup_lr": 1.0e-5,     # lr at the first step of the linear warm-up
        "optimizer": "adamw",
        "opt_eps": 1.0e-5,
        "opt_betas": [0.9, 0.999],
        "weight_decay": 0.067,
        "clip_grad": 1.0,        # max global grad norm; 0 disables
        "clip_mode": "norm",
        "clip_scope": "auto",    # global: one norm over all parameters (timm; in a graph by one optimizer conf,
                                 # engine/optim.py); group: per optimizer parameter group (OneFlow 0.9's own graph
                                 # clipping); auto: group in graph, global in eager
        "grad_accum_steps": 1,   # micro-batches per optimizer step (also the pipeline micro-batches)
        "amp": False,            # CUDA only: autocast + dynamic loss scaling
        "ema": True,             # keep an EMA of the weights and evaluate it too
        "ema_decay": 0.99992,
        "seed": 42,
        "graph": False,          # nn.Graph-compiled train/eval steps; eager otherwise
        "schedule_unit": "update",  # epoch: the lr moves once per epoch (the official runs: timm t_in_epochs=True,
                                 # configs/posmlp_{t,s,b}.yaml); update: every update (engine/schedule.py)
        "scheduler": "auto",     # schedule_unit=update only: timm (flowvision CosineLRScheduler) | oneflow
                                 # (WarmupLR+CosineDecayLR, runs in a graph) | auto: oneflow in graph, timm in eager
        "log_interval": 50,      # optimizer steps between console/TensorBoard scalars
        "eval_interval": 1,      # epochs between evaluations
        # ending early and resumably (engine/stop.py, docs/cluster.md): on these signals, or before max_minutes
        # (0: no budget) is spent, save `last` at an update boundary and exit 75; a non-finite loss or grad norm
        # halts (exit 3, nothing written) or skips the update (halting after nonfinite_patience in a row)
        "stop_signals": ["SIGTERM", "SIGUSR1"],
        "max_minutes": 0.0,
        "nonfinite": "halt",     # halt | skip
        "nonfinite_patience": 5,
    },
    "output": {
        "dir": "output/posmlp",  # checkpoints (last/, best/), summary.csv, tb/, log_rank*.txt
        "save_every_steps": 0,   # > 0: also write `last` every N optimizer steps
    },
    "dist": {
        "device": "cpu",         # cpu | cuda
        "cpu_kernels": True,     # on CPU, the layers' CPU-fast forms (cpu_kernels/; env POSMLP_CPU_KERNELS=0: off)
        "data_parallel": 0,      # 0: all ranks not used by tensor/pipeline parallelism
        "tensor_parallel": 1,
        "tensor_parallel_mode": "groups",  # groups: gating units split by channel groups | gather: run whole per rank
        "pipeline_parallel": 1,
        "zero_stage": 0,         # nn.Graph ZeRO sharding of optimizer state (0: off, 1-3: stage)
        "activation_checkpointing": [],  # level indices whose blocks recompute activations, e.g. [0, 1]
        "init_timeout": 300.0,   # seconds the ranks wait for each other at the start (oneflow_posmlp/rendezvous.py)
    },
    "log": {
        "tensorboard": True,
        "csv": True,
        "progress": True,        # progress bar with ETA on rank 0, when stderr is a terminal
    },
}

NULLABLE = {("data", "root"): str}

CHOICES = {
    ("train", "optimizer"): ("adamw",),
    ("train", "clip_mode"): ("norm",),
    ("train", "clip_scope"): ("auto", "global", "group"),
    ("train", "schedule_unit"): ("epoch", "update"),
    ("train", "scheduler"): ("auto", "timm", "oneflow"),
    ("train", "nonfinite"): ("halt", "skip"),
    ("aug", "mixup_mode"): ("batch",),
    ("aug", "remode"): ("pixel", "rand", "const"),
    ("aug", "train_interpolation"): ("random", "bilinear", "bicubic", "nearest"),
    ("aug", "interpolation"): ("bilinear", "bicubic", "nearest"),
    ("dist", "device"): ("cpu", "cuda"),
    ("data", "format"): ("folder", "shards"),
    ("data", "decode"): ("full", "draft"),
    ("dist", "tensor_parallel_mode"): ("groups", "gather"),
    ("dist", "zero_stage"): (0, 1, 2, 3),
    ("model", "stem_norm"): ("BN", "LN"),
    ("model", "downsample_norm"): ("BN", "LN"),
    ("model", "gate_unit"): ("posgu", "sgu"),
    ("model", "pool_layer"): ("conv", "merging"),
}

# Why a choice is limited, appended to the error.
CHOICE_NOTES = {
    ("aug", "mixup_mode"): "flowvision 0.2.1's elem/pair modes use np.bool, which numpy >= 1.24 removed",
    ("train", "clip_mode"): "the trainer clips by global norm, as the official runs (clip_mode: norm)",
}

_INF = math.inf
# Inclusive bounds (lo, hi); (lo, hi, "(]") excludes lo, "[)" excludes hi, "open" both.
RANGES = {
    ("data", "demo_train_per_class"): (1, _INF),
    ("data", "demo_val_per_class"): (1, _INF),
    ("data", "demo_image_size"): (8, _INF),
    ("data", "synthetic_size"): (1, _INF),
    ("data", "num_workers"): (0, _INF),
    ("data", "limit_train_batches"): (0, _INF),
    ("aug", "color_jitter"): (0.0, _INF),
    ("aug", "crop_pct"): (0.0, 1.0, "(]"),
    ("aug", "hflip"): (0.0, 1.0),
    ("aug", "vflip"): (0.0, 1.0),
    ("aug", "reprob"): (0.0, 1.0),
    ("aug", "recount"): (1, _INF),
    ("aug", "mixup"): (0.0, _INF),
    ("aug", "cutmix"): (0.0, _INF),
    ("aug", "mixup_prob"): (0.0, 1.0),
    ("aug", "mixup_switch_prob"): (0.0, 1.0),
    ("aug", "smoothing"): (0.0, 0.999),
    ("train", "epochs"): (1, _INF),
    ("train", "batch_size"): (1, _INF),
    ("train", "lr"): (0.0, _INF, "open"),
    ("train", "lr_base_batch"): (1, _INF),
    ("train", "min_lr"): (0.0, _INF),
    ("train", "warmup_epochs"): (0, _INF),
    ("train", "warmup_lr"): (0.0, _INF),
    ("train", "opt_eps"): (0.0, _INF, "open"),
    ("train", "weight_decay"): (0.0, _INF),
    ("train", "clip_grad"): (0.0, _INF),
    ("train", "grad_accum_steps"): (1, _INF),
    ("train", "ema_decay"): (0.0, 1.0),
    ("train", "log_interval"): (1, _INF),
    ("train", "eval_interval"): (1, _INF),
    ("train", "max_minutes"): (0.0, _INF),
    ("train", "nonfinite_patience"): (1, _INF),
    ("output", "save_every_steps"): (0, _INF),
    ("dist", "data_parallel"): (0, _INF),
    ("dist", "tensor_parallel"): (1, _INF),
    ("dist", "pipeline_parallel"): (1, _INF),
    ("dist", "init_timeout"): (1e-3, _INF),
    ("model", "in_chans"): (1, _INF),
    ("model", "num_levels"): (1, _INF),
    ("model", "num_classes"): (0, _INF),
    ("model", "chunks"): (1, _INF),
    ("model", "drop_rate"): (0.0, 1.0, "[)"),
    ("model", "drop_path_rate"): (0.0, 1.0, "[)"),
}

# Lists: (length or None for any, element type, optional element bounds as in RANGES); (int, float) takes
# numbers as given.
LENGTHS = {
    ("aug", "scale"): (2, float),
    ("aug", "ratio"): (2, float),
    ("aug", "mean"): (3, float),
    ("aug", "std"): (3, float),
    ("train", "opt_betas"): (2, float),
    ("dist", "activation_checkpointing"): (None, int),
    ("model", "img_size"): (2, int, (1, _INF)),
    ("model", "embed_dims"): (None, int, (1, _INF)),   # per-level lengths: model.check_model_geometry
    ("model", "depths"): (None, int, (0, _INF)),
    ("model", "win_size"): (None, int, (1, _INF)),
    ("model", "gamma"): (None, int, (1, _INF)),
    ("model", "mlp_ratio"): (None, (int, float), (0, _INF, "open")),
}
