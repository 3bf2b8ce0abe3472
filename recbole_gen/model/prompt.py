"""Prompt layout: token ids with placeholder slots for the history items, left-padded into a batch.

One prompt (ids; ``<img>`` marks a slot that receives a history item's representation)::

    <bos> [turn] instruction  { <begin_of_image> <img>*k <end_of_image> [title <sep>] } per history item  [turn] <begin_of_image>

and the target image's tokens follow the final ``<begin_of_image>``. ``[turn]``: what the tokenizer's chat template puts
before and after a user message (Janus-Pro: ``<|User|>: `` and ``\n\n<|Assistant|>:``, the layout it was trained to draw
after; the byte tokenizer of the tiny model has none). The unconditional prompt used by
classifier-free guidance (and by ``cond_dropout`` in training) is the same with no history items.
Rows are left-padded so every prompt ends at the same position and generation is batched.
"""
import copy

import torch


class PromptTooLongError(ValueError):
    """The history does not fit in the backbone's context."""


class PromptBuilder:
    def __init__(self, tokenizer, instruction, tokens_per_item, item_texts, use_titles, max_title_tokens):
        self.tokenizer = tokenizer
        special = tokenizer.special
        self.pad, self.bos = special["<pad>"], special["<bos>"]
        self.eos = special.get("<eos>", self.pad)
        self.boi, self.eoi = special["<begin_of_image>"], special["<end_of_image>"]
        self.slot = special["<image_placeholder>"]
        self.turn_open, turn_close = tokenizer.user_turn
        self.turn_close = tokenizer.encode(turn_close)
        self.sep = special.get("<sep>")
        self.tokens_per_item = int(tokens_per_item)
        self.head = self._head(instruction)
        self.use_titles = bool(use_titles) and item_texts is not None
        self.max_title_tokens = int(max_title_tokens)
        self.titles = None
        if item_texts is not None:
            self.titles = [tokenizer.encode(text)[: self.max_title_tokens] if text else [] for text in item_texts]

    def with_instruction(self, instruction):
        """The same layout after another instruction (the catalogue pre-training's prompt)."""
        other = copy.copy(self)
        other.head = self._head(instruction)
        return other

    def _head(self, instruction):
        return [self.bos] + self.tokenizer.encode(self.turn_open + (instruction or ""))

    def item_ids(self, item):
        ids = [self.boi] + [self.slot] * self.tokens_per_item + [self.eoi]
        if self.use_titles:
            ids += self.titles[item] + ([self.sep] if self.sep is not None else [])
        return ids

    def row(self, items):
        ids = list(self.head)
        for item in items:
            ids += self.item_ids(item)
        return ids + self.turn_close + [self.boi]

    def length(self, items):
        return len(self.row(items))

    def fit(self, items, budget, truncate):
        """``items`` (oldest first) cut from the oldest end until the prompt fits ``budget`` tokens, or an error."""
        length = self.length(items)
        if length <= budget:
            return items
        if not truncate:
            raise PromptTooLongError(
                f"the prompt for a history of {len(items)} items is {length} tokens, but only {budget} fit before the "
                f"target image in lmm_max_length; lower history_len, use fewer tokens per history item "
                f"(history_mode / history_tokens_per_item), or set truncate_history: True to drop the oldest items"
            )
        while items and self.length(items) > budget:
            items = items[1:]
        if self.length(items) > budget:
            raise PromptTooLongError(f"even an empty history's prompt ({self.length([])} tokens) exceeds {budget} tokens")
        return items

    def batch(self, histories, device=None):
        """``histories``: lists of item ids -> (ids [B,P] left-padded, attention mask [B,P])."""
        rows = [self.row(items) for items in histories]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(device), mask.to(device)

    def target_text(self, items, device=None):
        """``<end_of_image> title <eos>`` per target item, right-padded: (ids [B,M], mask [B,M])."""
        rows = [[self.eoi] + self.titles[item] + [self.eos] for item in items]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(device), mask.to(device)
