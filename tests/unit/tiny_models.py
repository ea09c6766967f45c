"""Tiny models shared by the quantization and export tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_bn_(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding has something to get wrong."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


class TinyResNet(nn.Module):
    """conv-bn-relu, conv-bn, residual add, relu, global pool, linear."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        y = self.relu(y + x)
        return self.fc(torch.flatten(self.pool(y), 1))


class TinyTransformer(nn.Module):
    """Embedding, LayerNorm, attention-like matmuls and an MLP: nn.Linear everywhere."""

    def __init__(self, vocab: int = 50, dim: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.ln1(self.emb(input_ids))
        attn = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0, dim=-1)
        h = self.ln2(h + attn @ self.v(h))
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h[:, 0])
