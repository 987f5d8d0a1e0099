"""The official Wave-ViT ImageNet classifier for mmpretrain.

After the four stages the official network appends the mean of the last
stage's tokens as a class token, updates it with one class-attention block
(CaiT's: the class token alone attends to every token), normalises all
tokens with the last stage's LayerNorm, and classifies twice: the class
token with ``head``, every other token with ``aux_head`` (token labeling).
At test time the two are combined as ``cls + 0.5 * max over tokens of
aux``. :class:`WaveViTClsHead` is that part, :class:`WaveViTClassifier`
mmpretrain's ``ImageClassifier`` that also loads the official checkpoints.

Imported when mmpretrain is installed
(:func:`wavevit_mm.registry.register_classifier`).
"""
from typing import Dict, List, Optional, Tuple

import torch
from mmpretrain.models import ClsHead, ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import Tensor, nn

from ..checkpoint import (CheckpointError, fit_problems, strip_prefix,
                          unwrap_state_dict)
from ..errors import ConfigError
from .official import (convert_official, convert_official_classifier,
                       describe_arch, infer_arch, is_official)
from .wavevit import BLOCK_NORM_EPS, WaveViT, attend


class ClassAttention(nn.Module):
    """Attention of the class token (the first) to all tokens:
    (B, 1 + N, C) -> (B, 1, C)."""

    def __init__(self, dim: int, num_heads: int, fused_attn: bool = True
                 ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fused_attn = fused_attn
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, num_tokens, dim = x.shape
        heads = self.num_heads
        q = self.q(x[:, :1]).view(batch, 1, heads, -1).transpose(1, 2)
        k, v = self.kv(x).view(batch, num_tokens, 2, heads, -1).permute(
            2, 0, 3, 1, 4).unbind(0)                    # (B, heads, 1 + N, d)
        x = attend(q, k, v, self.fused_attn)            # (B, heads, 1, d)
        return self.proj(x.transpose(1, 2).reshape(batch, 1, dim))


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClassBlock(nn.Module):
    """Pre-norm block that updates the class token only:
    c + attn(norm1([c, x])), then c + mlp(norm2(c)); x passes unchanged."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = ClassAttention(dim, num_heads, fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        cls_token = x[:, :1] + self.attn(self.norm1(x))           # (B, 1, C)
        cls_token = cls_token + self.mlp(self.norm2(cls_token))
        return torch.cat([cls_token, x[:, 1:]], dim=1)             # (B, 1+N, C)


@MODELS.register_module()
class WaveViTClsHead(ClsHead):
    """The official Wave-ViT classification head, after a backbone built
    with ``out_indices=(3, )`` and ``final_norm=False``.

    The class token (the mean of the last stage's tokens) passes a
    class-attention block, then every token the last stage's LayerNorm
    (``norm``). The score is ``fc(class token) + aux_weight * max over
    tokens of aux_fc(token)``. Training adds ``aux_loss_weight`` times the
    loss of every token's ``aux_fc`` score against the image's label:
    token labeling's dense label maps are not public.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): The last stage's embed dim.
        num_heads (int): Heads of the class attention (the last stage's).
        mlp_ratio (float): Hidden dim of the class block's MLP as a
            multiple of ``in_channels``. Default: 4.
        aux_weight (float): Weight of the token scores at test time, as in
            the official network. Default: 0.5.
        aux_loss_weight (float): Weight of the token loss (the official
            ``--dense-weight``). Default: 0.5.
        fused_attn (bool): Fused attention, see ``WaveViT``. Default: True.
        loss (dict): Config of the loss. Default: cross entropy.
        topk (int | tuple[int]): Top-k accuracy. Default: (1, ).
        cal_acc (bool): Training accuracy. Default: False.
        init_cfg (dict, optional): The official initialisation, truncated
            normal Linear weights (std 0.02), zero biases.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 aux_weight: float = 0.5,
                 aux_loss_weight: float = 0.5,
                 fused_attn: bool = True,
                 loss: Dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Tuple[int, ...] = (1, ),
                 cal_acc: bool = False,
                 init_cfg: Optional[Dict] = dict(
                     type='TruncNormal', layer='Linear', std=.02, bias=0.)
                 ) -> None:
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc,
                         init_cfg=init_cfg)
        if in_channels % num_heads:
            raise ConfigError(
                f'WaveViTClsHead: in_channels {in_channels} is not '
                f'divisible by num_heads {num_heads}')
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.aux_loss_weight = aux_loss_weight
        self.class_block = ClassBlock(in_channels, num_heads, mlp_ratio,
                                      fused_attn)
        self.norm = nn.LayerNorm(in_channels, eps=BLOCK_NORM_EPS)
        self.fc = nn.Linear(in_channels, num_classes)
        self.aux_fc = nn.Linear(in_channels, num_classes)

    def pre_logits(self, feats: Tuple[Tensor, ...]) -> Tensor:
        """The normalised tokens, class token first: (B, 1 + N, C)."""
        x = feats[-1].flatten(2).transpose(1, 2)                  # (B, N, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        return self.norm(self.class_block(x))

    def forward(self, feats: Tuple[Tensor, ...]) -> Tensor:
        """The official test-time scores, (B, num_classes)."""
        x = self.pre_logits(feats)
        aux = self.aux_fc(x[:, 1:]).max(dim=1)[0]
        return self.fc(x[:, 0]) + self.aux_weight * aux

    def loss(self, feats: Tuple[Tensor, ...], data_samples: List[DataSample],
             **kwargs) -> Dict[str, Tensor]:
        """The class token's loss (``loss``) and the tokens' (``loss_aux``),
        each against the image's label (or its mixed scores)."""
        x = self.pre_logits(feats)
        losses = self._get_loss(self.fc(x[:, 0]), data_samples, **kwargs)
        aux = self.aux_fc(x[:, 1:]).flatten(0, 1)          # (B * N, classes)
        target = (torch.stack([s.gt_score for s in data_samples])
                  if 'gt_score' in data_samples[0] else
                  torch.cat([s.gt_label for s in data_samples]))
        target = target.repeat_interleave(x.shape[1] - 1, dim=0)
        losses['loss_aux'] = self.aux_loss_weight * self.loss_module(
            aux, target, avg_factor=aux.shape[0], **kwargs)
        return losses


@MODELS.register_module()
class WaveViTClassifier(ImageClassifier):
    """mmpretrain's ``ImageClassifier`` that also loads the official
    ImageNet checkpoints.

    A state dict in the official layout (bare, under ``state_dict`` or
    ``model``, with or without ``module.``) is renamed to this model's keys
    as it is loaded, by any of mmpretrain's ways (``get_model(...,
    pretrained=)``, the inferencers, ``load_from``, a ``Pretrained``
    ``init_cfg``), and must fit exactly: otherwise nothing is loaded and
    the error says what the file holds. Arguments as ``ImageClassifier``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        backbone = getattr(self, 'backbone', None)
        if (isinstance(backbone, WaveViT)
                and isinstance(getattr(self, 'head', None), WaveViTClsHead)
                and not isinstance(backbone.stages[-1].norm, nn.Identity)):
            raise ConfigError(
                'WaveViTClsHead applies the last stage\'s LayerNorm after '
                'its class-attention block, as the official classifier '
                'does, but the backbone ends with that norm as well: set '
                'final_norm=False in the backbone config.')
        self._register_load_state_dict_pre_hook(self._from_official)

    def _from_official(self, state_dict: Dict, prefix: str, *args) -> None:
        """Rename an official state dict to this model's keys in place."""
        local, _ = strip_prefix(state_dict, prefix)
        try:
            weights, _ = unwrap_state_dict(local)
        except CheckpointError:  # no state dict: mmengine reports it
            return
        if not is_official(weights):
            return
        converted = convert_official_classifier(weights)
        own = self.state_dict()
        problems = fit_problems(converted, own, 'classifier')
        if problems:
            raise CheckpointError(_misfit(weights, own, problems))
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]
        state_dict.update({prefix + k: v for k, v in converted.items()})


def _misfit(official: Dict[str, Tensor], own: Dict[str, Tensor],
            problems: List[str]) -> str:
    """Why an official state dict does not fit a classifier's ``own``."""
    zoo = WaveViT.arch_zoo
    file_backbone = convert_official(official)[0]
    own_backbone = strip_prefix(own, 'backbone.')[0]
    file_arch = infer_arch(file_backbone, zoo)
    advice = ''
    if file_arch and file_arch != infer_arch(own_backbone, zoo):
        advice = (f' Use the config of Wave-ViT-{file_arch.upper()} '
                  f'(configs/classification/wavevit_{file_arch}_in1k.py).')
    classes = official.get('head.weight')
    if classes is not None and 'head.fc.weight' in own and (
            classes.shape[0] != own['head.fc.weight'].shape[0]):
        advice += (f' The file classifies {classes.shape[0]} classes, the '
                   f'head {own["head.fc.weight"].shape[0]}: to fine-tune '
                   f'on other classes, start from it with load_from.')
    return (f'This official Wave-ViT ImageNet checkpoint does not fit the '
            f'classifier: the file holds '
            f'{describe_arch(file_backbone, zoo)} weights, the classifier '
            f'{describe_arch(own_backbone, zoo)}; {"; ".join(problems)}. '
            f'Nothing was loaded.{advice}')
