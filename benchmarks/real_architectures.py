"""Real architectures at benchmark size, as recipes: what recording costs on models users train.

A ResNet with BatchNorm, GPT-2 and BERT built from HuggingFace configs (when `transformers` is installed), a
small ViT whose attention is `scaled_dot_product_attention`, and a two-layer LSTM language model. Each step
takes some 20-300 ms on two cores, so per-step costs of the recorder show at their real proportion.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro_audit import Recipe

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _batches(make: Callable[[torch.Generator], Any], count: int = 8) -> Any:
    generator = torch.Generator().manual_seed(1)
    return itertools.cycle([make(generator) for _ in range(count)])


def _classify(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = batch
    return {"ce": F.cross_entropy(model(x), y)}


# -- ResNet with BatchNorm -------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet(params: dict[str, Any]) -> Recipe:
    width = params.get("width", 32)
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for cout, stride in ((width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2), (4 * width, 1)):
        layers.append(Block(cin, cout, stride))
        cin = cout
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))
    batches = _batches(lambda g: (torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)))
    return Recipe(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  batches=batches, loss=_classify)


# -- ViT with fused attention ----------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1 if self.training else 0.0)
        return self.out(mixed.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 192, depth: int = 6, heads: int = 3, patch: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit(params: dict[str, Any]) -> Recipe:
    model = ViT()
    batches = _batches(lambda g: (torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)))
    return Recipe(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), batches=batches,
                  loss=_classify)


# -- LSTM language model ---------------------------------------------------------------------------------

class LSTMLM(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, dropout=0.1, batch_first=True)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(self.embed(tokens))[0])


def lstm(params: dict[str, Any]) -> Recipe:
    model = LSTMLM()

    def loss(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = model(tokens[:, :-1])
        return {"ce": F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))}

    return Recipe(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                  batches=_batches(lambda g: torch.randint(0, 1000, (32, 51), generator=g)), loss=loss)


# -- HuggingFace GPT-2 and BERT from configs -------------------------------------------------------------

def gpt2(params: dict[str, Any]) -> Recipe:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=2000, n_positions=128, n_embd=256, n_layer=4, n_head=4))

    def loss(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"lm": model(input_ids=tokens, labels=tokens).loss}

    return Recipe(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                  batches=_batches(lambda g: torch.randint(0, 2000, (8, 64), generator=g)), loss=loss)


def bert(params: dict[str, Any]) -> Recipe:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=2000, hidden_size=256, num_hidden_layers=4,
                                                     num_attention_heads=4, intermediate_size=1024,
                                                     max_position_embeddings=128, num_labels=4))

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens, labels = batch
        return {"ce": model(input_ids=tokens, labels=labels).loss}

    return Recipe(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), loss=loss,
                  batches=_batches(lambda g: (torch.randint(0, 2000, (8, 64), generator=g),
                                              torch.randint(0, 4, (8,), generator=g))))


ARCHITECTURES: dict[str, Callable[[dict[str, Any]], Recipe]] = {"resnet": resnet, "vit": vit, "lstm": lstm}
if HAS_TRANSFORMERS:
    ARCHITECTURES.update(gpt2=gpt2, bert=bert)
