"""Stem and downsampling layers. All take and return feature maps ``(B, C, H, W)``."""
import oneflow as flow
import oneflow.nn as nn

from .norm import LayerNorm


def _norm(kind, channels):
    return nn.BatchNorm2d(channels, eps=1e-6) if kind == "BN" else LayerNorm(channels, eps=1e-6)


def _apply_norm(norm, kind, x):
    """BatchNorm2d on ``(B, C, H, W)``; LayerNorm over C via ``(B, H, W, C)``."""
    if kind == "BN":
        return norm(x)
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvPatchEmbed(nn.Module):
    """Convolutional stem, stride 4: conv3x3/2 -> norm -> act -> conv3x3/2 -> norm -> act -> conv1x1 -> norm.

    ``(B, in_chans, H, W) -> (B, out_chan, H/4, W/4)``; ``stem_norm`` "BN" or "LN".
    """

    def __init__(self, in_chans=3, out_chan=96, stem_norm="BN", act_layer=nn.GELU):
        super().__init__()
        self.stem_norm = stem_norm
        ins, outs = [in_chans, out_chan // 2, out_chan], [out_chan // 2, out_chan, out_chan]
        kernels, strides, pads = [3, 3, 1], [2, 2, 1], [1, 1, 0]
        self.projs = nn.Sequential(*[nn.Conv2d(i, o, kernel_size=k, stride=s, padding=p)
                                     for i, o, k, s, p in zip(ins, outs, kernels, strides, pads)])
        self.norms = nn.Sequential(*[_norm(stem_norm, o) for o in outs])
        self.act = act_layer()

    def forward(self, x):
        last = len(self.projs) - 1
        for i, (proj, norm) in enumerate(zip(self.projs, self.norms)):
            x = _apply_norm(norm, self.stem_norm, proj(x))
            if i < last:
                x = self.act(x)
        return x


class ConvPatchMerging(nn.Module):
    """Downsampling by a depthwise-grouped conv3x3/2 (groups = in_chan) and a norm.

    ``(B, in_chan, H, W) -> (B, out_chan, H/2, W/2)``; ``out_chan`` must be a multiple of ``in_chan``.
    """

    def __init__(self, in_chan, out_chan, downsample_norm="LN", depth_conv=True):
        super().__init__()
        self.downsample_norm = downsample_norm
        groups = in_chan if depth_conv else 1
        self.conv = nn.Conv2d(in_chan, out_chan, kernel_size=3, stride=2, padding=1, groups=groups, bias=True)
        self.norm = _norm(downsample_norm, out_chan)

    def forward(self, x):
        return _apply_norm(self.norm, self.downsample_norm, self.conv(x))


class PatchMerging(nn.Module):
    """Swin-style patch merging: concatenate each 2x2 neighbourhood (4C), LayerNorm, 1x1 conv to out_chan.

    ``(B, in_chan, H, W) -> (B, out_chan, H/2, W/2)``.
    """

    def __init__(self, in_chan, out_chan, **unused):
        super().__init__()
        self.norm = LayerNorm(4 * in_chan, eps=1e-6)
        self.reduction = nn.Conv2d(4 * in_chan, out_chan, 1, 1, bias=False)

    def forward(self, x):
        x0, x1 = x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2]
        x2, x3 = x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]
        x = flow.cat([x0, x1, x2, x3], dim=1)
        return self.reduction(_apply_norm(self.norm, "LN", x))


POOL_LAYERS = {"conv": ConvPatchMerging, "merging": PatchMerging}
