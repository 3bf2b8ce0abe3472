"""What a generator knows about an item: its content vector, shared by GenLMM and GenDiff.

An item's content tokens are an MLP of its frozen image-tokenizer code vectors (what its image looks like) plus an
embedding of each of its ``content_fields`` values (``.item`` columns such as a category). Built from content, not
from the id, they generalise to items never seen in training. Optionally (:meth:`ItemContent.init_item_ids`) an item
seen in training also gets an ID embedding added, which learns what an ID model learns about it (which of two
look-alikes users take); an item never seen in training keeps its content alone, since an embedding that no example
ever trained would only be noise. :class:`ItemContent` is mixed into the module that holds the tokenizer and the
catalogue's image tokens (GenLMM's core, GenDiff's), so the parameters keep their names (``content_proj``,
``content_fields``, ``item_ids``) in checkpoints and cached artifacts.
"""
import torch
import torch.nn as nn


def content_ids(store, field):
    """The ``.item`` column ``field`` as value ids per internal item id (0 = padding or no value) and its vocabulary
    size: ``(LongTensor[item_num], int)``, the input of a content-field embedding."""
    values = store.item_column(field)
    vocabulary = sorted({v for v in values[1:] if v})
    index = {v: k + 1 for k, v in enumerate(vocabulary)}
    return torch.tensor([index.get(v, 0) if i else 0 for i, v in enumerate(values)]), len(vocabulary)


class ItemContent:
    """Mixin for an ``nn.Module`` that has ``vq`` (the image tokenizer) and ``tokens_of(items)`` (the items' image
    tokens)."""

    def init_content(self, code_dim, width, tokens_per_item, fields, dtype):
        """The content MLP (``code_dim`` code-vector inputs -> ``tokens_per_item`` vectors of ``width``) and one
        embedding per field of ``fields`` (``{field: (value ids per item, vocabulary size)}``), created and
        initialised in that order: call it under the caller's seeded RNG."""
        self.content_proj = nn.Sequential(nn.Linear(code_dim, width), nn.GELU(),
                                          nn.Linear(width, tokens_per_item * width)).to(dtype)
        self.content_fields = nn.ModuleDict()
        for name, (ids, vocabulary) in fields.items():
            self.content_fields[name] = nn.Embedding(vocabulary + 1, width, padding_idx=0).to(dtype)
            nn.init.normal_(self.content_fields[name].weight, std=0.02)
            self.register_buffer(f"content_{name}", torch.as_tensor(ids, dtype=torch.long), persistent=False)
        self.content_tokens_per_item = tokens_per_item
        self.item_ids = None

    def init_item_ids(self, width, dtype):
        """An ID embedding (zeros at first: the content alone), added to all content tokens of each item whose
        ``item_seen`` flag (a ``BoolTensor[item_num]`` buffer of the module: it has training interactions) is set."""
        self.item_ids = nn.Embedding(len(self.item_seen), width).to(dtype)
        nn.init.zeros_(self.item_ids.weight)

    def item_codes(self, items):
        """The items' frozen code vectors ``[N, D, grid, grid]`` (rows of the tokenizer's unit-norm codebook)."""
        return self.vq.quantize.get_codebook_entry(self.tokens_of(items))

    def content_tokens(self, items):
        """Items ``[N]`` -> their content tokens ``[N, tokens_per_item, width]``."""
        dtype = self.content_proj[0].weight.dtype
        out = self.content_proj(self.item_codes(items).flatten(1).to(dtype)).view(len(items), self.content_tokens_per_item, -1)
        for name, table in self.content_fields.items():
            out = out + table(getattr(self, f"content_{name}")[items]).unsqueeze(1)
        if self.item_ids is not None:
            out = out + (self.item_ids(items) * self.item_seen[items].unsqueeze(-1).to(out.dtype)).unsqueeze(1)
        return out
