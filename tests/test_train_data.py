"""The trainer's input pipeline and pieces, without training: flips, host split, resume, schedules."""

from __future__ import annotations

import io

import builder_fixtures as fx
import datasets
import numpy as np
import pytest
from PIL import Image

import conditioners
from builders import BuildSettings
from builders.run import run_build
from conditioners import Detection
from landmark_controlnet.training import data as input_data
from landmark_controlnet.training.step import learning_rate_schedule


@pytest.fixture(scope="module")
def hand_rows(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("flip")
    builder = fx.folder_recipe(root)
    run_build(str(builder), str(fx.photo_folder(data_dir, root)), BuildSettings(), progress=False)
    return list(datasets.load_dataset(str(builder), split="train"))


def test_random_flip_redraws_hand_encoded_with_left_and_right_swapped(hand_rows):
    for row in hand_rows:
        detection = Detection.from_json(row["landmarks"])
        stored = np.asarray(row["conditioning_image"].convert("RGB"))
        assert np.array_equal(conditioners.draw(detection), stored)  # the landmarks re-draw the row exactly
        flipped = np.asarray(input_data.flipped_conditioning(row["conditioning_image"], row["landmarks"]))
        assert np.array_equal(flipped, conditioners.draw(detection.mirrored()))
        kinds = {inst.kind for inst in detection.instances}
        if len(kinds) == 1:  # one hand: its colours change sides, so a pixel mirror would be wrong
            assert not np.array_equal(flipped, stored[:, ::-1])
    assert any(len({i.kind for i in Detection.from_json(r["landmarks"]).instances}) == 1 for r in hand_rows)


def test_prepare_example_flips_photo_and_conditioning_together(hand_rows):
    row = {
        "image": {"bytes": _png(hand_rows[0]["image"]), "path": "a.png"},
        "conditioning_image": {"bytes": _png(hand_rows[0]["conditioning_image"]), "path": None},
        "caption": "a hand",
        "landmarks": hand_rows[0]["landmarks"],
    }
    columns = input_data.Columns()
    plain = input_data.ExampleOptions(resolution=64)
    flip = input_data.ExampleOptions(resolution=64, random_flip=True)
    always = _rng_with_first_draw_below(0.5)
    example = input_data.prepare_example(row, columns, plain, always())
    pixels, conditioning, caption = (
        example[k] for k in ("pixel_values", "conditioning_pixel_values", "caption")
    )
    f_pixels = input_data.prepare_example(row, columns, flip, always())["pixel_values"]
    assert pixels.shape == (64, 64, 3) and conditioning.shape == (64, 64, 3) and caption == "a hand"
    assert pixels.dtype == conditioning.dtype == np.uint8  # scaled on the devices
    # the photo is mirrored (to 0.1 of the [-1, 1] the step scales it to)
    np.testing.assert_allclose(f_pixels.astype(np.float32), pixels[:, ::-1].astype(np.float32), atol=12.75)
    # and so is the conditioning image: the stored landmarks mirrored (left and right swapped),
    # re-drawn at the stored size, framed as every picture is
    f_conditioning = input_data.prepare_example(row, columns, flip, always())["conditioning_pixel_values"]
    stored = hand_rows[0]["conditioning_image"]
    mirrored = conditioners.draw(Detection.from_json(row["landmarks"]).mirrored(), stored.size)
    expected = np.asarray(input_data.frame(Image.fromarray(mirrored), 64).convert("RGB"))
    np.testing.assert_array_equal(f_conditioning, expected)
    lit, f_lit = conditioning.max(-1) > 25, f_conditioning.max(-1) > 25
    assert lit.sum() > 20 and (lit[:, ::-1] & f_lit).sum() >= 0.7 * lit.sum()  # where the hand was, mirrored


def test_inpainting_examples_carry_a_flipped_randomly_dilated_binary_mask(hand_rows):
    mask = np.zeros((128, 128), np.uint8)
    mask[40:80, 10:50] = 255  # a box on the left
    row = {
        "image": {"bytes": _png(hand_rows[0]["image"]), "path": "a.png"},
        "conditioning_image": {"bytes": _png(hand_rows[0]["conditioning_image"]), "path": None},
        "mask": {"bytes": _png(Image.fromarray(mask)), "path": None},
        "caption": "a hand",
    }
    columns = input_data.Columns(mask="mask")
    exact = input_data.prepare_example(row, columns, input_data.ExampleOptions(64), np.random.default_rng(0))
    assert exact["mask"].shape == (64, 64, 1) and set(np.unique(exact["mask"])) == {0, 255}
    assert (exact["mask"] > 0).sum() == 20 * 20 and exact["mask"][20:40, 5:25, 0].all()
    grown = [
        input_data.prepare_example(row, columns, input_data.ExampleOptions(64, mask_dilation=0.2), rng)[
            "mask"
        ]
        for rng in (np.random.default_rng(seed) for seed in range(8))
    ]
    assert all((g >= exact["mask"]).all() for g in grown), "dilation only grows the mask"
    assert len({int((g > 0).sum()) for g in grown}) > 2, "by a random amount"
    flip = input_data.ExampleOptions(64, random_flip=True)
    flipped = input_data.prepare_example(row, columns, flip, _rng_with_first_draw_below(0.5)())
    np.testing.assert_array_equal(flipped["mask"], exact["mask"][:, ::-1])


def test_the_host_sends_pictures_as_uint8_and_the_devices_scale_them(hand_rows):
    """Batches cross to the devices as the loop sends them (loader, prefetch, `put_batch`) in uint8, a
    quarter of float32's bytes; scaled there, they are the values the host used to send as floats."""
    import jax

    from landmark_controlnet.diffusion.pixels import conditioning_input, mask_input, photo_input
    from landmark_controlnet.training.step import Shardings

    mask = np.zeros((128, 128), np.uint8)
    mask[40:80, 10:50] = 255
    cells = {
        "image": {"bytes": _png(hand_rows[0]["image"]), "path": "a.png"},
        "conditioning_image": {"bytes": _png(hand_rows[0]["conditioning_image"]), "path": None},
        "mask": {"bytes": _png(Image.fromarray(mask)), "path": None},
    }
    rows = [{**cells, "caption": f"hand {i}"} for i in range(2 * jax.device_count())]
    columns, options = input_data.Columns(mask="mask"), input_data.ExampleOptions(64, random_flip=True)
    loader = input_data.BatchLoader(
        iter([(rows, {"batch": 1})]),
        lambda row, rng: input_data.prepare_example(row, columns, options, rng),
        lambda captions: {"input_ids": np.zeros((len(captions), 8), np.int32)},
        accumulation=1,
        seed=0,
        threads=1,
    )
    batches = input_data.prefetch(iter(loader), Shardings.over_all_devices().put_batch)
    sent, _ = next(batches)
    batches.close()
    pictures = ("pixel_values", "conditioning_pixel_values", "mask")
    assert all(sent[key].dtype == np.uint8 for key in pictures), {k: v.dtype for k, v in sent.items()}

    # What the host computed before, from the same 8-bit pictures (a flip included).
    examples = [
        input_data.prepare_example(r, columns, options, np.random.default_rng([0, 0, i]))
        for i, r in enumerate(rows)
    ]
    assert any(not np.array_equal(e["pixel_values"], examples[0]["pixel_values"]) for e in examples)
    as_floats = {
        "pixel_values": lambda e: e["pixel_values"].astype(np.float32) / 127.5 - 1.0,
        "conditioning_pixel_values": lambda e: e["conditioning_pixel_values"].astype(np.float32) / 255.0,
        "mask": lambda e: (e["mask"] >= 128).astype(np.float32),
    }
    scale = {"pixel_values": photo_input, "conditioning_pixel_values": conditioning_input, "mask": mask_input}
    for key in pictures:  # XLA may multiply by 1/127.5 where numpy divides: one float32 rounding apart
        expected = np.stack([as_floats[key](e) for e in examples])
        np.testing.assert_allclose(np.asarray(scale[key](sent[key][0])), expected, rtol=0, atol=2**-23)
    with pytest.raises(TypeError, match="uint8"):  # a batch scaled on the host is not scaled twice
        photo_input(np.asarray(photo_input(sent["pixel_values"])))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rng_with_first_draw_below(limit: float):
    seed = next(s for s in range(1000) if np.random.default_rng(s).random(2)[0] < limit)
    return lambda: np.random.default_rng(seed)


def test_hosts_read_disjoint_slices_of_every_global_batch_and_resume_in_place():
    table = datasets.Dataset.from_dict({"x": list(range(11))})
    hosts = [input_data.IndexedRows(table, input_data.Layout(2, 2, h), seed=3) for h in range(2)]
    seen = []
    for batch in range(2):  # one epoch: 11 rows // global batch 4 = 2 batches, the last 3 rows dropped
        parts = [set(h.indices(batch).tolist()) for h in hosts]
        assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 4
        seen += list(parts[0] | parts[1])
    assert len(set(seen)) == 8
    assert not np.array_equal(hosts[0].indices(0), hosts[0].indices(2))  # a new order each epoch
    fresh = hosts[0].batches(0)
    rows_from_start = [next(fresh)[0] for _ in range(4)]
    resumed_rows, position = next(hosts[0].batches(3))
    assert resumed_rows == rows_from_start[3] and position["batch"] == 4


def test_streamed_rows_resume_from_a_saved_position():
    stream = datasets.Dataset.from_dict({"x": list(range(10))}).to_iterable_dataset(num_shards=2)
    rows = input_data.StreamedRows(stream, input_data.Layout(3), seed=1)
    straight = rows.batches(0, 0)
    batches = [next(straight) for _ in range(5)]  # crosses into the second epoch
    assert batches[3][1]["epoch"] == 1
    epoch, offset = batches[1][1]["epoch"], batches[1][1]["rows_in_epoch"]
    resumed = rows.batches(epoch, offset)
    assert [next(resumed)[0] for _ in range(3)] == [b[0] for b in batches[2:5]]


def test_columns_missing_from_the_dataset_are_named():
    table = datasets.Dataset.from_dict({"image": [], "conditioning_image": [], "text": []})
    with pytest.raises(
        ValueError, match=r"--caption_column 'caption'.*\['image', 'conditioning_image', 'text'\]"
    ):
        input_data.Columns().check(table)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("constant", [1.0, 1.0, 1.0, 1.0]),
        ("constant_with_warmup", [0.0, 0.5, 1.0, 1.0]),
        ("linear", [0.0, 0.5, 1.0, 0.5]),
        ("cosine", [0.0, 0.5, 1.0, 0.5]),
    ],
)
def test_learning_rate_schedules_are_honoured(name, expected):
    schedule = learning_rate_schedule(name, 1.0, warmup_steps=2, total_steps=6)
    assert [float(schedule(step)) for step in (0, 1, 2, 4)] == pytest.approx(expected, abs=1e-6)


def test_closing_prefetch_stops_and_joins_its_thread():
    """A prefetch thread left running at exit aborts the interpreter once JAX is loaded."""
    import threading

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield {"x": np.zeros(1)}, {"batch": len(produced)}

    batches = input_data.prefetch(endless(), put=lambda batch: batch, depth=2)
    first, position = next(batches)
    assert position == {"batch": 1} and first["x"].shape == (1,)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]
    assert len(produced) <= 4  # the one taken, two queued, at most one more in hand when it stopped


@pytest.mark.parametrize(
    ("flag", "traced"), [("1:3", [1, 2]), ("0:1", [0]), ("2", [1, 2]), ("3:9", [3]), ("0", [])]
)
def test_profile_steps_trace_the_steps_asked_for(flag, traced, tmp_path, monkeypatch):
    """--profile_steps A:B counts this run's steps from 0 (the compiling one); a plain N is 1:1+N."""
    import jax

    from landmark_controlnet.options import parse_step_range
    from landmark_controlnet.training.loop import StepProfiler

    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda directory: calls.append(("start", directory)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    profiler = StepProfiler(parse_step_range(flag), tmp_path / "profile")
    seen = []
    for index in range(4):  # a run of 4 steps
        profiler.before_step(index, in_flight=None)
        seen += [index] if profiler.tracing else []
    profiler.close(in_flight=None)
    assert seen == traced
    assert calls == ([("start", str(tmp_path / "profile")), ("stop",)] if traced else [])


def _blank_cell(width: int, height: int) -> dict:
    """A `datasets` image cell of a flat picture of this size."""
    return {"bytes": _png(Image.new("RGB", (width, height), (9, 9, 9))), "path": None}


def test_sdxl_size_ids_add_training_crop_to_the_builders_record():
    """(original h, w, crop top, left, target h, w): a 384 x 512 (w x h) picture framed at 256 px is
    resized to 256 x 341 and cut 42 px from the top (341 - 256 = 85, halved down)."""
    columns, options = input_data.Columns(), input_data.ExampleOptions(256, size_ids=True)
    picture = _blank_cell(384, 512)
    recorded = {"conditioning_image": picture, "original_size": [1000, 750], "crop_top_left": [10, 20]}
    ids = input_data.prepare_conditioning(recorded, columns, options, flip=False)["time_ids"]
    # The builder's crop scales with the picture (256 / 384), then training's own crop adds to it.
    np.testing.assert_array_equal(
        ids, [1000, 750, round(10 * 256 / 384) + 42, round(20 * 256 / 384), 256, 256]
    )
    bare = {"conditioning_image": picture}  # no size columns: the picture's own size, no crop
    ids = input_data.prepare_conditioning(bare, columns, options, flip=False)["time_ids"]
    np.testing.assert_array_equal(ids, [512, 384, 42, 0, 256, 256])
    plain = input_data.prepare_conditioning(bare, columns, input_data.ExampleOptions(256), flip=False)
    assert "time_ids" not in plain  # SD 1.x/2.x batches carry none
