"""Explanations: Grad-CAM against its closed form, localisation scores on known cases, the command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import fp_tolerance, max_abs, network_tolerance

from jaxthyroid import cli, explain
from jaxthyroid.models import registry

SIZE = 32


@pytest.mark.parametrize("cross", [False, True])
def test_gradcam_equals_cam_of_the_linear_head(cross):
    """After the last block come a global mean and a Dense head, so d logit_f / d A_ijc =
    W_cf / (h w) exactly: Grad-CAM is ReLU(sum_c W_cf A_c) up to the positive factor
    1/(h w) that normalisation removes (Zhou et al.'s CAM)."""
    model = registry.get_model("resnet_tiny", num_classes=6, stem="small", cross=cross)
    x = np.random.default_rng(0).uniform(size=(3, SIZE, SIZE, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)), train=False)
    # Non-zero cross terms, so the cross model's last block really differs from the plain one.
    variables = jax.tree.map(lambda v: v + 0.05 if v.ndim == 1 else v, variables)
    block = explain.last_block(variables)
    assert block == "stage2_block1"
    maps, logits = explain.gradcam(model, variables, x)
    assert maps.shape == (3, 6, SIZE, SIZE) and logits.shape == (3, 6)
    want_logits = model.apply(variables, x, train=False)  # eager: XLA fuses the jitted one differently
    np.testing.assert_allclose(
        logits, want_logits, **network_tolerance(variables["params"], scale=max_abs(want_logits))
    )

    _, state = model.apply(
        variables, x, train=False, capture_intermediates=lambda m, n: m.path == (block,), mutable=["intermediates"]
    )
    act = state["intermediates"][block]["__call__"][0]  # [B, h, w, C]
    head = variables["params"]["head"]["kernel"]  # [C, F]
    cam = jax.nn.relu(jnp.einsum("bhwc,cf->bfhw", act, head))
    want = explain.normalise_maps(jax.image.resize(cam, (3, 6, SIZE, SIZE), "bilinear"))
    # A sum over C channels in two orders (autodiff's and the einsum's), maps scaled to 1.
    np.testing.assert_allclose(maps, want, **fp_tolerance(reduction_size=act.shape[-1], depth=2))
    assert maps.max() == pytest.approx(1.0, rel=2 * 2.0**-23) and maps.min() >= 0.0


def test_gradcam_of_an_earlier_block_and_a_clear_error_for_an_unknown_one():
    model = registry.get_model("resnet_tiny", num_classes=6)  # torchvision stem: 32² -> 8² into stage 1
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)), train=False)
    x = np.random.default_rng(1).uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32)
    maps, _ = explain.heat_maps("gradcam", model, variables, x, block="stage1_block1")
    assert maps.shape == (2, 6, SIZE, SIZE) and maps.max() > 0
    # Both blocks from one backward pass: each map is its single-block map (the zero
    # deltas change no value; the same sums, possibly fused in another order).
    (late, early), logits = explain.make_gradcam_blocks(model, ("stage2_block1", "stage1_block1"))(variables, x)
    late_alone, _ = explain.make_gradcam(model, "stage2_block1")(variables, x)
    # The gradient reaches stage 1 through stage 2's 3×3 convolutions (9 x C terms each).
    channels = variables["params"]["head"]["kernel"].shape[0]
    tol = fp_tolerance(reduction_size=9 * channels, depth=3)
    np.testing.assert_allclose(early, maps, **tol)
    np.testing.assert_allclose(late, late_alone, **tol)
    with pytest.raises(explain.ExplainError, match="stage1_block1"):
        explain.heat_maps("gradcam", model, variables, x, block="stage9_block1")
    with pytest.raises(explain.ExplainError, match="occlusion"):
        explain.heat_maps("saliency", model, variables, x)


def test_occlusion_marks_the_only_pixels_the_model_sees():
    """A 'model' whose logit is the mean of the top-left 8×8 corner: occluding elsewhere
    changes nothing, so the map is zero outside the windows that touch the corner."""

    class Corner(explain.nn.Module):
        @explain.nn.compact
        def __call__(self, x, *, train):
            return jnp.mean(x[:, :8, :8, 0], axis=(1, 2))[:, None] * 4.0

    x = np.ones((1, SIZE, SIZE, 1), np.float32)
    maps, _ = explain.occlusion(Corner(), {}, x, patch=4, stride=4)
    assert maps.shape == (1, 1, SIZE, SIZE)
    # x / max(x) may round through a reciprocal: 1 to within two float32 roundings.
    np.testing.assert_allclose(maps[0, 0, :8, :8], 1.0, rtol=2 * 2.0**-23)
    assert maps[0, 0, 8:, :].max() == 0.0 and maps[0, 0, :, 8:].max() == 0.0


def test_pointing_game_and_iou_on_known_cases():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[8:16, 8:16] = True  # 64 pixels
    inside = np.zeros((SIZE, SIZE), np.float32)
    inside[10, 12] = 1.0
    outside = np.zeros((SIZE, SIZE), np.float32)
    outside[25, 3] = 1.0
    flat = np.full((SIZE, SIZE), 0.3, np.float32)
    maps = np.stack([inside, outside, flat, mask.astype(np.float32)])
    masks = np.stack([mask] * 4)
    np.testing.assert_array_equal(explain.pointing_game(maps, masks), [True, False, False, True])
    # A plateau at the maximum points at its centre: two equal peaks either side of the
    # mask point into it, two inside its top-left corner region stay inside.
    twin = np.zeros((SIZE, SIZE), np.float32)
    twin[12, 2] = twin[12, 22] = 1.0  # centroid (12, 12): inside, though neither peak is
    corner = np.zeros((SIZE, SIZE), np.float32)
    corner[:4, :4] = 1.0  # centroid (1.5, 1.5) -> (2, 2): outside
    np.testing.assert_array_equal(explain.pointing_game(np.stack([twin, corner]), masks[:2]), [True, False])
    half = np.zeros((SIZE, SIZE), np.float32)
    half[8:16, 12:20] = 1.0  # 32 of its 64 pixels on the mask: IoU 32 / 96
    ious = explain.iou(np.stack([mask.astype(np.float32), half, outside, flat]), np.stack([mask] * 4))
    np.testing.assert_allclose(ious, [1.0, 1 / 3, 0.0, 0.0])
    scores = explain.localisation_scores(maps[:2], masks[:2])
    assert scores == {"pointing_game": 0.5, "iou": pytest.approx(float(explain.iou(maps[:2], masks[:2]).mean()))}


def test_random_maps_hit_a_mask_at_its_share_of_the_image():
    n = 400
    maps = explain.random_maps(0, n, SIZE, grid=4)
    assert maps.shape == (n, SIZE, SIZE) and maps.max() == pytest.approx(1.0, rel=2 * 2.0**-23)
    left = np.zeros((n, SIZE, SIZE), bool)
    left[:, :, : SIZE // 2] = True  # half the image, symmetric to the lattice
    rate = explain.pointing_game(maps, left).mean()
    assert abs(rate - 0.5) < 4 * np.sqrt(0.25 / n)  # 4 binomial standard deviations


def test_phantom_lesions_give_nodule_and_gland_masks():
    images, masks = explain.phantom_lesions("hot_nodule", 3, size=64, seed=0)
    assert images.shape == (3, 64, 64, 1) and masks.shape == (3, 64, 64) and masks.dtype == bool
    assert 0.0 <= images.min() and images.max() <= 1.0
    nodule = masks.sum(axis=(1, 2))
    assert (nodule > 0).all() and (nodule < 0.2 * 64 * 64).all()
    # A hot nodule is bright: the image is brighter inside its mask than on average.
    assert all(images[i, ..., 0][masks[i]].mean() > images[i].mean() for i in range(3))
    _, gland = explain.phantom_lesions("graves", 2, size=64, seed=0)
    assert (gland.sum(axis=(1, 2)) > nodule.max()).all()
    with pytest.raises(explain.ExplainError, match="no lesion mask"):
        explain.phantom_lesions("normal", 1, size=64, seed=0)


# -- on a finished tiny run (trained once per session, see test_cross_training) --------


def test_explain_command_writes_one_png_per_image(run_dir, tmp_path, capsys):
    from PIL import Image

    from jaxthyroid.data import export

    images, _ = explain.phantom_lesions("hot_nodule", 2, size=64, seed=3)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"scan{i}.png")
        export.write_png16(files[-1], (image[..., 0] * 1000).astype(np.uint16))
    for method in ("gradcam", "occlusion"):
        out = tmp_path / method
        assert (
            cli.main(["explain", "--run", str(run_dir), *map(str, files), "--out", str(out), "--method", method]) == 0
        )
        assert "scan0.png" in capsys.readouterr().out
        rows = json.loads((out / "explain.json").read_text())["images"]
        assert [r["file"] for r in rows] == list(map(str, files))
        for r in rows:
            assert r["findings"] and set(r["findings"]) <= set(r["probabilities"])
            with Image.open(r["png"]) as im:
                assert im.size[0] > im.size[1] > 100  # a row of panels


def test_localisation_report_beside_the_random_baseline(run_dir):
    report = explain.localisation_report(run_dir, n_images=4, findings=("hot_nodule", "cold_nodule"))
    # resnet_tiny has two stages: Grad-CAM on the last block of each.
    assert list(report["maps"]) == ["gradcam/stage2_block1", "gradcam/stage1_block1"]
    grids = [m["grid"] for m in report["maps"].values()]
    assert grids[1] == 2 * grids[0]  # stage 2 halves the resolution
    for finding in ("hot_nodule", "cold_nodule"):
        r = report[finding]
        assert 0.0 < r["mask_fraction"] < 0.2 and 0.0 <= r["detected"] <= 1.0
        for name in report["maps"]:
            s = r[name]
            assert set(s) == {"pointing_game", "pointing_game_interval", "iou", "random"}
            low, high = s["pointing_game_interval"]
            assert 0.0 <= low <= s["pointing_game"] <= high <= 1.0
            for scores in (s, s["random"]):
                assert 0.0 <= scores["pointing_game"] <= 1.0 and 0.0 <= scores["iou"] <= 1.0
    rows = explain.localisation_table(report)
    assert len(rows) == 4 and {r["map"] for r in rows} == set(report["maps"])
    with pytest.raises(explain.ExplainError, match="no lesion mask"):
        explain.localisation_report(run_dir, n_images=2, findings=("normal",))


def test_localisation_section_of_the_report():
    """The report's table: one row per finding and map, 'above random' from the interval."""
    from jaxthyroid import paper_report

    def scores(pg, low, high, random_pg):
        return {
            "pointing_game": pg,
            "pointing_game_interval": [low, high],
            "iou": 0.1,
            "random": {"pointing_game": random_pg, "iou": 0.02},
        }

    loc = {
        "which": "phase2",
        "seed": 7919,
        "threshold": 0.5,
        "images": 64,
        "maps": {"gradcam/stage4_block2": {"method": "gradcam", "block": "stage4_block2", "grid": 2}},
        "hot_nodule": {"mask_fraction": 0.02, "detected": 1.0, "gradcam/stage4_block2": scores(0.5, 0.38, 0.62, 0.03)},
        "cold_nodule": {"mask_fraction": 0.01, "detected": 0.7, "gradcam/stage4_block2": scores(0.02, 0.0, 0.08, 0.02)},
    }
    md = paper_report.localisation_section(loc)
    rows = [line for line in md.splitlines() if line.startswith("| hot_nodule") or line.startswith("| cold_nodule")]
    assert len(rows) == 2 and "2×2" in rows[0]
    assert "| yes |" in rows[0] and "| no |" in rows[1]
    assert "## Localisation" in md and "7919" in md
