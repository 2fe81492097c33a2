#!/usr/bin/env python3
"""Writes the reference tensors lookout's preprocessing is tested against.

Reference = what the model was trained with: Hugging Face's BEiT image
processor (the PIL backend, `BeitImageProcessorPil`: resize with PIL, rescale
1/255, normalize) applied to the centre-cropped image. Photos come from
scikit-learn's bundled sample images, so nothing is downloaded.

Everything is stored losslessly and small (tests/fixtures/preprocess/):
- `<photo>.png`: the RGB photo (scaled to 480x320 so the fixtures stay small).
- `china.gray.png`: the same as 8-bit luma (PIL's "L").
- `<photo>.jpg`: the photo as a JPEG (quality 92), for the decode path;
  `flower.progressive.jpg` the same as a progressive JPEG.
- `<photo>.yuyv-limited.png`, `<photo>.nv12-limited.png`,
  `china.yuyv-full.png`, `china.nv12-full.png`: raw YUYV and NV12 bytes
  stored as 8-bit grayscale PNG images (width 2*w for YUYV, height 3*h/2 for
  NV12), so they are compressed and the test reads the exact bytes back.
- `<photo>.<case>.ref.png`: the reference tensor. The processor's output is
  always (u8 / 255 - 0.5) / 0.5 of the PIL-resized uint8 image; the script
  checks that identity (to 1e-6) and stores that uint8 image, which is the
  tensor bit for bit once the test applies the same affine map, at a sixth
  of the size of f32 data. The plain RGB/BGR cases use the model's 224x224;
  the others 112x112, which keeps the fixtures under 2 MB and downscales the
  320 px crop by more.

RGB -> YUV used to make the YUV fixtures (BT.601, chroma of each pair of
pixels for YUYV, of each 2x2 block for NV12, averaged in RGB then converted):
  limited: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
           Cb = 128 + (-37.797 R - 74.203 G + 112.0 B) / 255
           Cr = 128 + (112.0 R - 93.786 G - 18.214 B) / 255
  full:    Y = 0.299 R + 0.587 G + 0.114 B
           Cb = 128 - 0.168736 R - 0.331264 G + 0.5 B
           Cr = 128 + 0.5 R - 0.418688 G - 0.081312 B
The YUV references are computed from the exact inverse of those matrices
(float, rounded to uint8, each pixel taking its own pair's/block's chroma),
so a test failure means lookout's YUV -> RGB is off, not that chroma
subsampling lost detail.

Run from the repository root: tools/.venv/bin/python tools/make_preprocess_fixtures.py
"""

import io
import json
import pathlib

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images
from transformers.models.beit import BeitImageProcessorPil

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "preprocess"
SIZE = 224
SMALL = 112
PHOTO_SIZE = (480, 320)
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}

LIMITED = dict(y_off=16.0, y_scale=219.0 / 255.0, c_scale=224.0 / 255.0)
FULL = dict(y_off=0.0, y_scale=1.0, c_scale=1.0)
KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB


def rgb_to_ycbcr(rgb, r):
    rgb = rgb.astype(np.float64)
    R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = KR * R + KG * G + KB * B
    cb = (B - y) / (2 * (1 - KB))
    cr = (R - y) / (2 * (1 - KR))
    return r["y_off"] + y * r["y_scale"], 128 + cb * r["c_scale"], 128 + cr * r["c_scale"]


def ycbcr_to_rgb(y, cb, cr, r):
    y = (y - r["y_off"]) / r["y_scale"]
    cb = (cb - 128) / r["c_scale"]
    cr = (cr - 128) / r["c_scale"]
    R = y + 2 * (1 - KR) * cr
    B = y + 2 * (1 - KB) * cb
    G = (y - KR * R - KB * B) / KG
    return np.clip(np.round(np.stack([R, G, B], -1)), 0, 255).astype(np.uint8)


def u8(x):
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def to_yuyv(rgb, r):
    h, w, _ = rgb.shape
    y, _, _ = rgb_to_ycbcr(rgb, r)
    pairs = rgb.reshape(h, w // 2, 2, 3).astype(np.float64).mean(2)
    _, cb, cr = rgb_to_ycbcr(pairs, r)
    out = np.empty((h, w // 2, 4), np.uint8)
    out[..., 0], out[..., 2] = u8(y[:, 0::2]), u8(y[:, 1::2])
    out[..., 1], out[..., 3] = u8(cb), u8(cr)
    return out.reshape(h, w * 2)


def from_yuyv(raw, r):
    h, w2 = raw.shape
    q = raw.reshape(h, w2 // 4, 4).astype(np.float64)
    y = np.stack([q[..., 0], q[..., 2]], -1).reshape(h, w2 // 2)
    cb = np.repeat(q[..., 1], 2, axis=1)
    cr = np.repeat(q[..., 3], 2, axis=1)
    return ycbcr_to_rgb(y, cb, cr, r)


def to_nv12(rgb, r):
    h, w, _ = rgb.shape
    y, _, _ = rgb_to_ycbcr(rgb, r)
    blocks = rgb.reshape(h // 2, 2, w // 2, 2, 3).astype(np.float64).mean((1, 3))
    _, cb, cr = rgb_to_ycbcr(blocks, r)
    uv = np.stack([u8(cb), u8(cr)], -1).reshape(h // 2, w)
    return np.concatenate([u8(y), uv], 0)


def from_nv12(raw, r):
    h = raw.shape[0] * 2 // 3
    y = raw[:h].astype(np.float64)
    uv = raw[h:].reshape(h // 2, -1, 2).astype(np.float64)
    up = lambda c: np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)
    return ycbcr_to_rgb(y, up(uv[..., 0]), up(uv[..., 1]), r)


def region(w, h, roi, fraction):
    """The square lookout crops: the ROI in pixels, then its centre square.
    Mirrors src/preprocess.rs (`crop_region`)."""
    x0, y0, rw, rh = 0, 0, w, h
    if roi is not None:
        x0 = min(int(round(roi[0] * w)), w - 1)
        y0 = min(int(round(roi[1] * h)), h - 1)
        rw = max(1, min(int(round(roi[2] * w)), w - x0))
        rh = max(1, min(int(round(roi[3] * h)), h - y0))
    short = min(rw, rh)
    side = min(max(int(np.float32(short) * np.float32(fraction) + np.float32(0.5)), 1), short)
    return x0 + (rw - side) // 2, y0 + (rh - side) // 2, side


def reference(img, filt, size, roi=None, fraction=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    left, top, side = region(img.width, img.height, roi, fraction)
    crop = img.crop((left, top, left + side, top + side))
    proc = BeitImageProcessorPil(
        size={"height": size, "width": size}, resample=FILTERS[filt], image_mean=list(mean), image_std=list(std)
    )
    tensor = proc(crop, return_tensors="np")["pixel_values"][0]
    # The uint8 image the processor normalized, recovered and checked.
    m = np.array(mean, np.float64)[:, None, None]
    s = np.array(std, np.float64)[:, None, None]
    back = np.round((tensor.astype(np.float64) * s + m) * 255.0)
    assert back.min() >= 0 and back.max() <= 255
    again = (back / 255.0 - m) / s
    assert np.abs(again - tensor).max() < 1e-6, np.abs(again - tensor).max()
    return back.astype(np.uint8).transpose(1, 2, 0)


def save_png(path, array):
    Image.fromarray(array).save(path, optimize=True)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sample = load_sample_images()
    cases = []
    for name, full in zip(["china", "flower"], sample.images):
        photo = Image.fromarray(full).resize(PHOTO_SIZE, Image.LANCZOS)
        rgb = np.asarray(photo)
        save_png(OUT / f"{name}.png", rgb)
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=92)
        (OUT / f"{name}.jpg").write_bytes(buf.getvalue())
        decoded_jpeg = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

        def add(case, fixture, fmt, img, size=SMALL, filt="bicubic", range_="limited", roi=None, fraction=1.0,
                ref=None):
            if ref is None:
                ref = f"{name}.{case}.ref.png"
                save_png(OUT / ref, reference(img, filt, size, roi, fraction))
            cases.append(
                dict(photo=name, case=case, input=fixture, reference=ref, size=size, format=fmt, filter=filt,
                     color_range=range_, roi=roi, crop_fraction=fraction, width=photo.width, height=photo.height)
            )

        # The model's size for the plain RGB path; a smaller one elsewhere
        # keeps the fixtures small (and downscales by more).
        add("rgb", f"{name}.png", "rgb8", photo, size=SIZE)
        add("bgr", f"{name}.png", "bgr8", photo, size=SIZE, ref=f"{name}.rgb.ref.png")
        add("jpeg", f"{name}.jpg", "jpeg", decoded_jpeg)
        yuyv = to_yuyv(rgb, LIMITED)
        save_png(OUT / f"{name}.yuyv-limited.png", yuyv)
        add("yuyv-limited", f"{name}.yuyv-limited.png", "yuyv", Image.fromarray(from_yuyv(yuyv, LIMITED)))
        nv12 = to_nv12(rgb, LIMITED)
        save_png(OUT / f"{name}.nv12-limited.png", nv12)
        add("nv12-limited", f"{name}.nv12-limited.png", "nv12", Image.fromarray(from_nv12(nv12, LIMITED)))
        if name != "china":
            # Progressive JPEG (what phones and PIL's `progressive=True`
            # write; cameras send baseline) takes a different decode path.
            buf = io.BytesIO()
            photo.save(buf, "JPEG", quality=92, progressive=True)
            (OUT / f"{name}.progressive.jpg").write_bytes(buf.getvalue())
            prog = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
            add("jpeg-progressive", f"{name}.progressive.jpg", "jpeg", prog)
            continue
        gray = photo.convert("L")
        save_png(OUT / f"{name}.gray.png", np.asarray(gray))
        add("gray", f"{name}.gray.png", "gray8", gray.convert("RGB"))
        add("rgb-bilinear", f"{name}.png", "rgb8", photo, filt="bilinear")
        add("rgb-nearest", f"{name}.png", "rgb8", photo, filt="nearest")
        # ROI (240x224 px) then a 0.875 centre crop: 196 px up-scaled to 224.
        add("rgb-roi", f"{name}.png", "rgb8", photo, size=SIZE, roi=[0.1, 0.2, 0.5, 0.7], fraction=0.875)
        for fmt, to, back in [("yuyv", to_yuyv, from_yuyv), ("nv12", to_nv12, from_nv12)]:
            raw = to(rgb, FULL)
            save_png(OUT / f"{name}.{fmt}-full.png", raw)
            add(f"{fmt}-full", f"{name}.{fmt}-full.png", fmt, Image.fromarray(back(raw, FULL)), range_="full")
    for stale in set(OUT.iterdir()) - {OUT / c["input"] for c in cases} - {OUT / c["reference"] for c in cases}:
        stale.unlink()
    (OUT / "cases.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(cases)} cases, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
