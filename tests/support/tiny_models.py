"""Helpers for composer tests: tiny real models, real LoRA modules, task files.

Fast tests use a random-initialised Llama-style causal LM and a T5-style seq2seq model (a few
thousand parameters) with a byte-level BPE tokenizer trained in the test, saved to temporary
folders so they load through the same code path as a real checkpoint. """

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "the cat sat on the mat",
    "past tense of walk is walked",
    "translate to french: hello world",
    "yes no maybe true false",
    "one two three four five six seven eight nine ten",
    "question: what is the colour of the sky? answer: blue",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(chat_template: str | None = None):
    """A small byte-level BPE tokenizer trained on CORPUS (works offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "</s>", "<unk>", "<s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def save_tiny_causal(folder: Path, *, seed: int = 0, chat_template: str | None = None) -> Path:
    """Save a random-initialised 2-layer Llama-style causal LM and its tokenizer to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_seq2seq(folder: Path, *, seed: int = 0) -> Path:
    """Save a random-initialised 2-layer T5-style seq2seq model and its tokenizer to ``folder``."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = make_tokenizer()
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_lora(
    base_folder: Path,
    out: Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    base_model_name: str | None = None,
    seq2seq: bool = False,
) -> Path:
    """Save a PEFT LoRA with random A and B (non-zero update) for the model in ``base_folder``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(base_folder)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(targets),
        init_lora_weights=False,
        task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    peft_model.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_model_name or str(base_folder)
    cfg_path.write_text(json.dumps(cfg))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON Lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FEW_SHOT = [
    {"input": "past tense of walk", "target": "walked"},
    {"input": "the cat sat on the", "target": "mat"},
    {"input": "one two three", "target": "four"},
    {"input": "what is the colour of the sky?", "target": "blue"},
    {"input": "yes or no?", "target": "yes", "choices": ["yes", "no"]},
]


def direct_logprobs(model: torch.nn.Module, options) -> list[float]:
    """Each (prompt, target) sequence in a forward of its own, unpacked and unpadded: the sum
    of its target-token log-probabilities (the first target token is skipped without a prompt)."""
    scores = []
    with torch.no_grad():
        for opt in options:
            ids = torch.tensor([list(opt.prompt_ids) + list(opt.target_ids)])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            n = len(opt.prompt_ids)
            scores.append(sum(float(logp[n + j - 1, t])
                              for j, t in enumerate(opt.target_ids) if n + j >= 1))
    return scores
