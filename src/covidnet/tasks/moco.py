"""MoCo v2 (He et al., "Momentum contrast for unsupervised visual representation learning", CVPR 2020; Chen et
al., "Improved baselines with momentum contrastive learning", 2020): the second method of ``covidnet
pretrain``'s self-supervised task (``tasks/selfsup.py``, ``--ssl-method moco``), the one MoCo-CXR (Sowrirajan
et al. 2021) pretrained chest radiographs with.

One view of an image goes through the backbone (its pooled last feature map) and a projection MLP (linear,
ReLU, linear: MoCo v2's head) to a query ``q``; the other view through a **key encoder**, a copy of the
backbone and projection that is not trained but follows them as a moving average
(``key = m * key + (1 - m) * query`` before every step), to a key ``k``. Both are L2-normalised. The loss is
InfoNCE: a cross-entropy that picks ``k`` for ``q`` out of ``k`` and a **queue** of the keys of earlier
batches, at temperature ``T``: ``L = -log(exp(q.k / T) / (exp(q.k / T) + sum_j exp(q.n_j / T)))``. After each
step the batch's keys enter the queue and the oldest leave it.

Why MoCo beside SimSiam: SimSiam's features on real films read no better than random weights' in a linear
probe (``docs/training.md``), and a contrastive loss is told explicitly that two films are different films.
SimCLR's in-batch negatives would need thousands of images a batch; the queue gives MoCo many negatives at
any batch size, so it runs on a CPU or one GPU like SimSiam. Its whole state (key encoder and queue) is saved
with the heads, so a resumed run continues exactly.

Settings, for films rather than ImageNet: a queue of ``QUEUE`` keys, fewer than one epoch of a fold's
training films here (about 780), so that a film is rarely its own negative through its key of the last
epoch (MoCo's 65,536 is for 1.28 M images); a momentum of ``MOMENTUM`` 0.99 rather than 0.999, because a
10-epoch run here takes about 500 steps, after which 0.999 would leave the key encoder 60 % its random start
(0.99: under 1 %); MoCo v2's temperature 0.2 and 128-dimensional output. The key encoder's BatchNorm uses
its batch's statistics, as in MoCo, without MoCo's shuffled BatchNorm across GPUs (one device has nothing to
shuffle across).

Written here rather than taken from ``lightly`` for the reason ``tasks/simsiam.py`` gives; a test checks the
head, the loss with its queue and the momentum update against lightly's ``MoCoProjectionHead``,
``NTXentLoss(memory_bank_size=...)`` and ``update_momentum``, number for number.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .sslmethod import Method

OUTPUT_DIM = 128  # MoCo v2's
QUEUE = 512
MOMENTUM = 0.99
TEMPERATURE = 0.2


class ProjectionHead(nn.Sequential):
    """Linear, ReLU, linear (MoCo v2's MLP head; the hidden width is the backbone's feature width, as
    ResNet-50's 2048 is in the paper)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int = OUTPUT_DIM):
        super().__init__(nn.Linear(input_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim))


class Heads(nn.Module):
    """The query's projection, the key encoder (a frozen copy of the backbone and the projection) and the
    queue of earlier keys with its write position, all in ``state_dict`` (so ``--resume`` restores them)."""

    def __init__(self, backbone: nn.Module, num_features: int, queue: int = QUEUE):
        super().__init__()
        self.projection = ProjectionHead(num_features, num_features)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projection = copy.deepcopy(self.projection)
        for p in [*self.key_backbone.parameters(), *self.key_projection.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue, OUTPUT_DIM), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def follow(self, backbone: nn.Module, momentum: float = MOMENTUM) -> None:
        """The key encoder's moving-average step towards the query's backbone and projection."""
        for query, key in ((backbone, self.key_backbone), (self.projection, self.key_projection)):
            for q, k in zip(query.parameters(), key.parameters()):
                k.mul_(momentum).add_(q.detach(), alpha=1 - momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """The batch's keys in place of the oldest; a batch that reaches the end fills it and the rest is
        dropped, the next batch starting at the front (as lightly's memory bank does)."""
        size, ptr = len(self.queue), int(self.queue_ptr)
        take = min(len(keys), size - ptr)
        self.queue[ptr : ptr + take] = keys[:take].detach().to(self.queue.dtype)
        self.queue_ptr[0] = 0 if ptr + len(keys) >= size else ptr + take


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = TEMPERATURE):
    """InfoNCE of L2-normalised queries ``q`` against their keys ``k`` and the queue's keys as negatives."""
    positive = (q * k).sum(1, keepdim=True)
    negative = q @ queue.T
    logits = torch.cat([positive, negative], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCo(Method):
    """A backbone (the registry's interface: ``forward_features``) with MoCo's heads: ``(x1, x2)`` -> (loss,
    the standard deviation of the L2-normalised queries, the batch's keys). The caller steps the key encoder
    before (``before_step``: ``Heads.follow``) and queues the keys after (``after_step``: ``Heads.enqueue``):
    both change state in place, which is kept out of the forward that DDP and torch.compile wrap. The
    self-supervised task's interface for a method (``tasks/selfsup.py``), as ``simsiam.SimSiam`` has it."""

    title = "MoCo"

    @staticmethod
    def create_heads(backbone: nn.Module, num_features: int) -> Heads:
        return Heads(backbone, num_features)

    @staticmethod
    def settings() -> dict:
        """What a checkpoint records of the method."""
        return {"projection": [OUTPUT_DIM], "queue": QUEUE, "momentum": MOMENTUM, "temperature": TEMPERATURE}

    def before_step(self) -> None:
        """The key encoder follows the backbone and projection as they are before the step."""
        self.heads.follow(self.backbone)

    def after_step(self, extra, gather) -> None:
        """The step's keys (``extra[0]``, gathered from every process by ``gather``) enter the queue."""
        self.heads.enqueue(gather(extra[0]))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.heads
        q = F.normalize(h.projection(self.pooled(x1)), dim=1)
        with torch.no_grad():
            k = F.normalize(h.key_projection(h.key_backbone.forward_features(x2).float().mean((2, 3))), dim=1)
        spread = q.detach().std(0, correction=0).mean()
        return info_nce(q, k, h.queue.clone()), spread, k
