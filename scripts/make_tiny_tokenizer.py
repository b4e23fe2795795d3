"""Build the small BPE tokenizer that ships in configs/tiny/tokenizer (for tiny random test models).

Run once: python scripts/make_tiny_tokenizer.py TEXT_FILE. Byte-level BPE so any UTF-8 text encodes.
"""

import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def main(text_file: str, out: str = "configs/tiny/tokenizer", vocab_size: int = 1024) -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([text_file], trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", model_max_length=2048)
    Path(out).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
