"""The DALI path: ``fn.readers.webdataset`` over indexed shards -> decode -> RandomResizedCrop -> flip ->
normalise (CHW float), fed through ``DALIGenericIterator``.

* Index files: the pure-python indexer in ``shards.py`` writes DALI's wds2idx v1.2 format listing only usable
  samples, so a corrupt or truncated JPEG never reaches the decoder (it is counted instead).
* Decoding runs on ``mixed`` (nvJPEG, output on this rank's GPU) when CUDA is available, on the CPU otherwise;
  ``data.dali_device`` overrides.
* Sharding: each rank reads its own shards (``shards[rank::world]``); with fewer shards than ranks the reader
  splits the samples with ``shard_id=rank, num_shards=world``.
* The hashtags travel through the pipeline as the raw json/txt bytes (zero-padded per batch) and are mapped to
  multi-hot targets on the host.
* Re-sampling (``data.resample``, resample.py): the rank's weighted epoch draws, the same as the PyTorch loader's,
  are written as index files that list each drawn sample as often as it was drawn, one index per (epoch, shard);
  the reader visits them in order (through the shuffle buffer).  The index covers ``DALI_DRAW_EPOCHS(...)`` epochs
  and then repeats.
* Object storage: ``s3://`` shards are opened by DALI's own S3 client (the AWS SDK for C++), the index files stay
  local (``data.index_dir``).  DALI builds that client once per process, at the first s3:// open, from
  ``AWS_ENDPOINT_URL`` (read then, never again) and the SDK's usual credentials and region chain
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_REGION``); it has no path-style switch:
  the SDK addresses buckets by path for an endpoint given as an IP address (``http://10.0.0.5:9000/bucket/key``)
  and by virtual host for a name (``http://bucket.minio.local:9000/key``), so a MinIO or Ceph store needs either
  its IP address in ``AWS_ENDPOINT_URL`` or virtual-host buckets enabled (MinIO: ``MINIO_DOMAIN``).  Its first
  requests (one HEAD per shard) are sent from ``Pipeline.build`` with the GIL held.
* Resume: DALI checkpointing (``enable_checkpointing=True``): ``state_dict()`` holds the iterator's checkpoint
  (reader position, shuffle buffer, RNG of every random op) and a rebuilt pipeline started from it yields the
  same batches as the uninterrupted run.
"""

from __future__ import annotations

import base64

from .common import CROP_RATIO, CROP_SCALE, RankShards, check_resample_state, crop_scale, decode_metas
from .loader import IMAGENET_MEAN, IMAGENET_STD

RESAMPLED_DRAWS_PER_INDEX = 16384  # the DALI stream repeats its re-sampled draws after about this many samples


def dali_draw_epochs(epoch_size: int) -> int:
    """Epochs of re-sampled draws written into the DALI indexes before the stream repeats them."""
    return max(1, min(64, -(-RESAMPLED_DRAWS_PER_INDEX // epoch_size)))


def write_resampled_indexes(shards: RankShards, draws, out_dir: str) -> tuple[list[str], list[str]]:
    """(paths, index_paths) for the reader: per epoch, per shard, the drawn samples in draw order, repeats kept."""
    from .shards import _index_text, _write_atomic

    paths, index_paths = [], []
    shard_of = [path for path, _ in shards.samples]
    order = {path: k for k, path in enumerate(dict.fromkeys(shard_of))}
    for epoch in range(dali_draw_epochs(draws.epoch_size)):
        by_shard: dict[str, list] = {}
        for i in draws.epoch(epoch):
            path, sample = shards.samples[int(i)]
            by_shard.setdefault(path, []).append(sample)
        for path in sorted(by_shard, key=order.get):
            index_path = f"{out_dir}/e{epoch:03d}-s{order[path]:05d}.idx"
            _write_atomic(index_path, _index_text(by_shard[path], {}))
            paths.append(path)
            index_paths.append(index_path)
    return paths, index_paths


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "mixed" if torch.cuda.is_available() else "cpu"
    if setting == "mixed" and not torch.cuda.is_available():
        raise ValueError("data.dali_device=mixed needs a CUDA GPU; use data.dali_device=cpu (or auto)")
    return setting


def build_pipeline(*, paths, index_paths, shard_id, num_shards, stage, img_size, micro_batch, num_threads, seed,
                   device, shuffle_buffer, checkpoint=None, with_meta=True, scale=None):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    device_id = None
    if device == "mixed":
        import torch

        device_id = torch.cuda.current_device()

    @pipeline_def(batch_size=micro_batch, num_threads=num_threads, device_id=device_id, seed=seed,
                  enable_checkpointing=True, prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        jpegs, meta = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=["jpg", "json;txt"], shard_id=shard_id, num_shards=num_shards,
            random_shuffle=shuffle_buffer > 1, initial_fill=max(shuffle_buffer, 1), seed=seed, name="reader",
            dtypes=[types.UINT8, types.UINT8], missing_component_behavior="error")
        images = fn.decoders.image(jpegs, device=device, output_type=types.RGB)
        images = fn.random_resized_crop(images, size=[img_size, img_size], random_area=list(scale or CROP_SCALE[stage]),
                                        random_aspect_ratio=list(CROP_RATIO))
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD],
                                          mirror=fn.random.coin_flip(probability=0.5))
        if with_meta:
            return images, fn.pad(meta, fill_value=0)
        return (images,)

    p = pipe(checkpoint=checkpoint) if checkpoint is not None else pipe()
    p.build()
    return p


class DaliShardLoader:
    """This rank's infinite loader over webdataset shards through DALI (see loader.py for the contract)."""

    def __init__(self, cfg, *, stage, img_size, micro_batch, rank=0, world_size=1, seed=0, tokenizer=None):
        self.shards = RankShards(cfg, stage=stage, rank=rank, world_size=world_size, tokenizer=tokenizer)
        web = [p for p in self.shards.paths if p.startswith(("http://", "https://"))]
        if web:  # DALI's readers open local files and s3:// objects (AWS_ENDPOINT_URL), not http(s) URLs
            raise ValueError(f"data.shards={cfg.shards!r}: DALI reads local and s3:// shards, not {web[0]}; use "
                             f"data.loader=torch for https:// shards")
        self.num_classes = self.shards.num_classes
        self.stage, self.img_size, self.micro_batch = stage, img_size, micro_batch
        self.seed = seed * 1000 + rank
        self.threads = max(1, cfg.num_workers)
        self.device = resolve_device(cfg.dali_device)
        self.shuffle_buffer = cfg.shuffle_buffer
        self.draws = self.shards.resample_draws(seed=seed, world_size=world_size)
        self._draw_args = dict(seed=seed, world_size=world_size)
        self.index_dir = cfg.index_dir
        self.batches_served = 0
        self.no_known_hashtag = 0
        self._checkpoint = None
        self._iter = None

    def _build(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        with_meta = self.shards.batches.reads_meta
        paths, index_paths = [ix.path for ix in self.shards.usable], [ix.index_path for ix in self.shards.usable]
        shard_id, num_shards = self.shards.sub_rank, self.shards.sub_world
        if self.draws is not None:  # the draws are over this rank's own samples already
            from .resample import resample_dir

            out_dir = resample_dir(self.index_dir, f"{sorted(paths)}|{self.draws.fingerprint()}")
            paths, index_paths = write_resampled_indexes(self.shards, self.draws, out_dir)
            shard_id, num_shards = 0, 1
        pipe = build_pipeline(
            paths=paths, index_paths=index_paths,
            shard_id=shard_id, num_shards=num_shards, stage=self.stage, img_size=self.img_size,
            micro_batch=self.micro_batch, num_threads=self.threads, seed=self.seed, device=self.device,
            shuffle_buffer=self.shuffle_buffer, checkpoint=self._checkpoint, with_meta=with_meta,
            scale=crop_scale(self.shards.cfg, self.stage))
        names = ["images", "meta"] if with_meta else ["images"]
        # no reader_name: the reader wraps around epochs and the stream never ends
        self._iter = DALIGenericIterator([pipe], names, size=-1, auto_reset=False,
                                         last_batch_policy=LastBatchPolicy.FILL)

    def __iter__(self):
        while True:
            if self._iter is None:
                self._build()
            try:
                for out in self._iter:
                    batch = out[0]
                    result = {"images": batch["images"]}
                    if "meta" in batch and self.shards.batches.captions:
                        result.update(self.shards.captions(decode_metas(batch["meta"].cpu().numpy())))
                    elif "meta" in batch:
                        targets, missing = self.shards.targets(decode_metas(batch["meta"].cpu().numpy()))
                        result["targets"] = targets
                        self.no_known_hashtag += missing
                    self.batches_served += 1
                    yield result
            except RuntimeError as error:
                self._recover(error)

    def _recover(self, error: RuntimeError) -> None:
        """The decoder hit an image the index did not catch (``data.validate=false``): re-index this rank's shards
        decoding every image with PIL, and rebuild the pipeline without the bad samples (a new shuffle order:
        the stream from here on is not the one a run without the bad image would have seen)."""
        before = sum(ix.count for ix in self.shards.usable)
        after = self.shards.load_indexes(validate=True, force=True)
        if after == before:
            raise error  # not a bad image: a real failure
        import warnings

        warnings.warn(f"DALI failed on a corrupt image; re-validated rank shards with PIL and left out "
                      f"{before - after} sample(s) ({str(error).splitlines()[0][:200]})")
        self._iter, self._checkpoint = None, None
        self.seed += 7919
        if self.draws is not None:  # the sample list changed: draw over the samples that are left
            self.draws = self.shards.resample_draws(**self._draw_args)

    def state_dict(self) -> dict:
        ckpt = self._iter.checkpoints()[0] if self._iter is not None else self._checkpoint
        if isinstance(ckpt, bytes):  # a serialized protobuf: keep the state JSON-safe
            ckpt = "base64:" + base64.b64encode(ckpt).decode("ascii")
        state = {"loader": "dali", "batches_served": self.batches_served, "no_known_hashtag": self.no_known_hashtag,
                 "dali_checkpoint": ckpt}
        if self.draws is not None:
            state["resample"] = self.draws.fingerprint()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("loader") != "dali":
            raise ValueError(f"this checkpoint's data position was written by the {state.get('loader')} loader; "
                             f"resume with data.loader={state.get('loader')}")
        check_resample_state(state, self.draws)
        self.batches_served = int(state["batches_served"])
        self.no_known_hashtag = int(state.get("no_known_hashtag", 0))
        ckpt = state.get("dali_checkpoint")
        if isinstance(ckpt, str) and ckpt.startswith("base64:"):
            ckpt = base64.b64decode(ckpt[len("base64:"):])
        self._checkpoint = ckpt
        self._iter = None

    def stats(self) -> dict:
        return self.shards.stats(self.batches_served * self.micro_batch, self.no_known_hashtag)

    def close(self) -> None:
        self._iter = None
