"""Real architectures as recipes: what users train, not what we wrote for our fixtures.

A torchvision-style ResNet with BatchNorm, a Transformer encoder whose attention dropout runs inside
`scaled_dot_product_attention`, a language model with tied embeddings, a frozen layer and masked
attention, and a HuggingFace GPT-2 built from a config (when `transformers` is installed). Each takes
params that add a zero-weighted loss term the way users add one, or change one real thing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from repro_audit import Recipe

# -- ResNet with BatchNorm -------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=momentum)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout, momentum=momentum))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, *, classes: int = 10, momentum: float = 0.1, aux_head: bool = False,
                 fc_first: bool = False) -> None:
        super().__init__()
        if fc_first:  # the same modules, created in another order
            self.fc = nn.Linear(16, classes)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8, momentum=momentum),
                                  nn.ReLU())
        self.layer1 = BasicBlock(8, 8, 1, momentum)
        self.layer2 = BasicBlock(8, 16, 2, momentum)
        # An auxiliary classifier created before the final one, as deep-supervision heads are.
        self.aux_head = nn.Linear(16, classes) if aux_head else None
        if not fc_first:
            self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.layer2(self.layer1(self.stem(x))).mean((2, 3))
        return self.fc(features), None if self.aux_head is None else self.aux_head(features)


def resnet(params: dict[str, Any]) -> Recipe:
    model = ResNet(momentum=params.get("bn_momentum", 0.1), aux_head=params.get("aux_head", False),
                   fc_first=params.get("fc_first", False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scheduler = None
    if "max_lr" in params:  # OneCycleLR keeps its own settings (max_lr, base_momentum...) in the groups
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params["max_lr"], total_steps=10)
    generator = torch.Generator().manual_seed(params.get("data_seed", 1))
    batches = [(torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator))
               for _ in range(4)]

    def loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits, aux = model(images)
        terms = {"ce": F.cross_entropy(logits, labels)}
        if aux is not None:
            terms["aux_ce"] = F.cross_entropy(aux, labels)
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss, lr_scheduler=scheduler)


# -- Transformer encoder, dropout inside scaled_dot_product_attention ----------------------------------

class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.heads = heads
        self.dropout = dropout

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        mask = ~padding[:, None, None, :]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.proj(context.transpose(1, 2).reshape(batch, time, width))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = SelfAttention(d_model, heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(2 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, padding))
        return self.norm2(x + self.ff(x))


class Encoder(nn.Module):
    def __init__(self, *, vocab: int = 50, d_model: int = 32, heads: int = 4, layers: int = 2,
                 dropout: float = 0.1, probe_branch: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, dropout) for _ in range(layers))
        self.classify = nn.Linear(d_model, 4)
        # A probing branch added after the shared layers, with dropout of its own.
        self.probe = nn.Sequential(nn.Dropout(0.5), nn.Linear(d_model, 1)) if probe_branch else None

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(tokens)
        outputs: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            x = layer(x, padding)
            if index == 0 and self.probe is not None:
                outputs["probe"] = self.probe(x).mean()
        outputs["logits"] = self.classify(x.mean(1))
        return outputs


def encoder(params: dict[str, Any]) -> Recipe:
    model = Encoder(probe_branch=params.get("probe_branch", False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(params.get("data_seed", 1))
    batches = []
    for _ in range(4):
        tokens = torch.randint(0, 50, (4, 10), generator=generator)
        padding = torch.arange(10)[None, :] >= torch.randint(6, 11, (4, 1), generator=generator)
        batches.append({"tokens": tokens, "padding": padding, "labels": torch.randint(0, 4, (4,), generator=generator)})

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["tokens"], batch["padding"])
        terms = {"ce": F.cross_entropy(outputs["logits"], batch["labels"])}
        if "probe" in outputs:
            terms["probe"] = outputs["probe"].pow(2)
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)


# -- A language model with tied embeddings, a frozen layer and masked attention ---------------------------

class TiedLM(nn.Module):
    def __init__(self, *, vocab: int = 40, d_model: int = 16, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.frozen_mix = nn.Linear(d_model, d_model)
        self.frozen_mix.requires_grad_(False)  # a frozen, pretrained-style layer
        self.query = nn.Linear(d_model, d_model)
        self.unembed = nn.Linear(d_model, vocab, bias=False)
        if tie:
            self.unembed.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.frozen_mix(self.embed(tokens))
        scores = self.query(x) @ x.transpose(1, 2) / 4.0
        scores = scores.masked_fill(padding[:, None, :], float("-inf"))  # the mask writes -inf on purpose
        attention = torch.softmax(scores, dim=-1)
        return self.unembed(attention @ x), scores


def tied_lm(params: dict[str, Any]) -> Recipe:
    model = TiedLM(tie=params.get("tie", True))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        tokens = torch.randint(0, 40, (4, 8), generator=generator)
        padding = torch.arange(8)[None, :] >= torch.tensor([[8], [6], [5], [7]])
        batches.append((tokens, padding))

    def loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        tokens, padding = batch
        logits, scores = model(tokens, padding)
        terms = {"lm": F.cross_entropy(logits.reshape(-1, 40), tokens.reshape(-1))}
        if params.get("attention_entropy"):
            # An entropy of the attention over all keys: 0 x log(0) where the mask wrote -inf.
            log_p = torch.log_softmax(scores, dim=-1)
            terms["attention_entropy"] = -(log_p.exp() * log_p).sum(-1).mean()
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)


# -- HuggingFace models from a config ---------------------------------------------------------------------

def bert(params: dict[str, Any]) -> Recipe:
    """BERT registers `position_ids` and `token_type_ids` as buffers and initialises its weights twice."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                        vocab_size=64, max_position_embeddings=16)
    model = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (2, 12), generator=generator)} for _ in range(4)]

    def loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        return {"mlm": model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss}

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss)


def gpt2(params: dict[str, Any]) -> Recipe:
    from transformers import BatchEncoding, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    model = GPT2LMHeadModel(config)
    head = nn.Linear(32, 1) if params.get("value_head") else None  # an auxiliary head, built after the model
    parameters = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    generator = torch.Generator().manual_seed(params.get("data_seed", 1))
    batches = [BatchEncoding({"input_ids": torch.randint(0, 64, (2, 12), generator=generator),
                              "attention_mask": torch.ones(2, 12, dtype=torch.long)}) for _ in range(4)]
    if head is not None:
        model.value_head = head  # registered on the model so that its module calls are seen

    def loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        out = model(**batch, labels=batch["input_ids"], output_hidden_states=head is not None)
        terms = {"lm": out.loss}
        if head is not None:
            terms["value"] = model.value_head(out.hidden_states[-1]).pow(2).mean()
        return terms

    return Recipe(model=model, optimizer=optimizer, batches=batches, loss=loss,
                  clip_grad_norm=params.get("clip_grad_norm"))
