"""Regenerate the label files shipped in src/bigtransfer/labels/ from timm's wheel (run once; output is committed).

    pip install --no-deps timm==1.0.31 && python scripts/make_label_files.py

timm ships the WordNet synset lists in BiT's class order (`imagenet_synsets.txt` for the 1000
ILSVRC-2012 classes, `imagenet21k_goog_synsets.txt` for the 21,843 classes of Google's
ImageNet-21k release that BiT-M heads use) and a synset → lemma table; we write "synset<TAB>lemmas".
"""

import gzip
import importlib.util
from pathlib import Path

# Located without importing timm (its import needs torchvision's compiled operators).
INFO = Path(importlib.util.find_spec("timm").origin).parent / "data" / "_info"
OUT = Path(__file__).resolve().parents[1] / "src" / "bigtransfer" / "labels"


def main() -> None:
    lemmas = dict(line.split("\t", 1) for line in (INFO / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    for source, target, expected in [
        ("imagenet_synsets.txt", "imagenet1k.tsv", 1000),
        ("imagenet21k_goog_synsets.txt", "imagenet21k.tsv.gz", 21843),
    ]:
        synsets = (INFO / source).read_text().split()
        assert len(synsets) == expected, (source, len(synsets))
        text = "".join(f"{synset}\t{lemmas[synset]}\n" for synset in synsets)
        if target.endswith(".gz"):
            (OUT / target).write_bytes(gzip.compress(text.encode(), mtime=0))
        else:
            (OUT / target).write_text(text)
        print(f"wrote {OUT / target}: {len(synsets)} classes")


if __name__ == "__main__":
    main()
