"""A Janus-Pro-shaped checkpoint folder with random weights, written as a real one is: the model by
``save_pretrained``, a fast tokenizer that carries Janus-Pro's special tokens and chat layout, and the processor files
(image processor + chat template). ``lmm_path`` loads it through the same calls as a snapshot of
deepseek-community/Janus-Pro-1B; nothing is downloaded.

    python tests/janus_pro_fixture.py --out /tmp/janus-pro-fixture            # the CPU fixture (tests use it)
    python tests/janus_pro_fixture.py --out /tmp/janus-pro-1b --size 1b       # Janus-Pro-1B's full sizes

Janus-Pro-1B's shapes are kept where they decide what runs (384 px images, a 24 x 24 grid of 16,384 VQ codes at 16x
downsampling, the SigLIP-shaped vision tower at 384 px with 16 px patches, the 102,400-token vocabulary, the module
names, the special tokens, the chat layout); ``--size fixture`` cuts only depths and widths (``CUTS``).
"""
import argparse
from pathlib import Path

#: deepseek-community/Janus-Pro-1B's language model (its vision tower and VQ are JanusVisionConfig's and
#: JanusVQVAEConfig's defaults; the aligners are 2 layers deep into the language model's width)
JANUS_PRO_1B_TEXT = dict(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384, rms_norm_eps=1e-6)
#: what the CPU fixture cuts: depths and widths only
CUTS = {"fixture": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=4),
                        vision=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
                        vq=dict(base_channels=32, latent_channels=32, num_res_blocks=1)),
        "1b": dict(text={}, vision={}, vq={})}

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
#: bos / eos / pad and the image placeholder at the published config's ids (text_config's bos / eos / pad_token_id,
#: image_token_id); <begin_of_image> / <end_of_image> at 100016 / 100593, believed to be Janus's but not checked against
#: its tokenizer.json (not available offline); the other specials follow in the added range. No code depends on the
#: values: they are read from the tokenizer
SPECIAL_IDS = {BOS: 100000, EOS: 100001, PAD: 100002, BOI: 100016, IMAGE: 100581, EOI: 100593}
OTHER_SPECIALS = ("<patch_placeholder>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<|User|>",
                  "<|Assistant|>")
#: Janus's conversation layout ("<|User|>: ...\n\n<|Assistant|>:"), for text-only and image turns
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] | lower == 'user' -%}<|User|>: {% else %}<|Assistant|>:{% endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image_placeholder>{%- else -%}{{ part['text'] }}{%- endif -%}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] | lower == 'user' -%}{{ '\\n\\n' }}{%- else -%}" + EOS + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}"
)


def janus_config(size):
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    cut = CUTS[size]
    text = LlamaConfig(**{**JANUS_PRO_1B_TEXT, **cut["text"]}, bos_token_id=SPECIAL_IDS[BOS],
                       eos_token_id=SPECIAL_IDS[EOS], pad_token_id=SPECIAL_IDS[PAD])
    vision = JanusVisionConfig(**cut["vision"], projection_dim=text.hidden_size)
    vq = JanusVQVAEConfig(**cut["vq"], projection_dim=text.hidden_size, image_token_embed_dim=text.hidden_size)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=SPECIAL_IDS[IMAGE])


def janus_tokenizer():
    """A byte-level BPE tokenizer (every byte one token: no merges are needed for a fixture) with Janus-Pro's
    special tokens at their ids, and its extra special tokens (``image_token``, ``boi_token``, ``eoi_token``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    specials = dict(SPECIAL_IDS)
    next_id = max(SPECIAL_IDS.values()) + 1
    for token in OTHER_SPECIALS:
        specials[token], next_id = next_id, next_id + 1
    vocab.update(specials)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        model_max_length=JANUS_PRO_1B_TEXT["max_position_embeddings"], additional_special_tokens=list(OTHER_SPECIALS),
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def write_janus_pro(out, size="fixture", seed=0, device="cpu"):
    """Write the folder ``out`` (config.json, model.safetensors in bf16 as published, tokenizer, processor files);
    returns its path. ``device``: where the random weights are drawn (Janus-Pro-1B's 1.9B: a GPU is much faster)."""
    import torch
    from transformers import JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    out = Path(out)
    config = janus_config(size)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    image_size = config.vision_config.image_size
    processor = JanusProcessor(
        image_processor=JanusImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                            image_std=[0.5] * 3),
        tokenizer=janus_tokenizer(), chat_template=CHAT_TEMPLATE, use_default_system_prompt=False,
        num_image_tokens=config.vision_config.num_image_tokens)
    processor.save_pretrained(out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", choices=sorted(CUTS), default="fixture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to draw the random weights (e.g. cuda)")
    args = parser.parse_args()
    print(f"wrote {write_janus_pro(args.out, args.size, args.seed, args.device)}")


if __name__ == "__main__":
    main()
