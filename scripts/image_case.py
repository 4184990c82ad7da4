#!/usr/bin/env python3
"""Write image files of the kinds a pose pipeline meets, and how OpenCV decodes each.

The official pipeline reads images with cv2.imread(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)
and converts BGR to RGB; hrnet's load_image must give the same pixels. For each file
NAME.EXT written here, NAME.opencv.png holds OpenCV's decode as 8-bit RGB (lossless), which
tests/image_decode.rs compares with load_image's to the byte.

The picture is synthetic (a seeded mix of gradients, edges and noise, odd width and height,
so that the decoders' rounding, upsampling and edge handling all show). Files:
  baseline_420.jpg, baseline_444.jpg, progressive_422.jpg   YCbCr JPEGs (PIL/libjpeg)
  gray.jpg                                                 one-component JPEG
  cmyk.jpg                                                 Adobe CMYK JPEG (four components)
  exif_rotated.jpg                                         EXIF orientation 6, to be ignored
  jpeg_411_restarts.jpg, jpeg_440_progressive.jpg          OpenCV's JPEGs: 4:1:1 with restart
                                                           markers; 4:4:0 (vertical halving,
                                                           as a rotated 4:2:2), progressive
  rgb16.png, bgra16.png, gray16.png                        16-bit PNGs (bgra16: with alpha)
  rgba.png, bilevel.png                                    8-bit with alpha; one bit a pixel
  palette.png                                              palette PNG with transparency
  bmp_bgr.bmp, bmp_gray.bmp, bmp_rgba.bmp, bmp_bilevel.bmp BMP: 24-bit, 8-bit palette, 32-bit,
                                                           one bit a pixel
  webp_lossy.webp, webp_lossless.webp,                     WebP: VP8, VP8L, VP8 with alpha
  webp_alpha_lossy.webp
  pnm_rgb.ppm, pnm_gray.pgm, pnm_rgb16.ppm,                PNM: binary, 8- and 16-bit, bilevel
  pnm_bilevel.pbm
Needs numpy, Pillow and opencv-python(-headless). Examples (the committed files):
  python3 scripts/image_case.py --out tests/data/images
  python3 scripts/image_case.py --size 16x12 --out fuzz/seeds/image   # the fuzzer's seeds
"""

import argparse
import os

import cv2
import numpy as np
from PIL import Image

def picture(seed, W, H):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 5.0)
    g = 255 * x / (W - 1)
    b = np.where((x - 30) ** 2 + (y - 20) ** 2 < 150, 230.0, 25.0)
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 12, (H, W, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def opencv_rgb(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise SystemExit(f"OpenCV cannot read {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--size", default="67x45", help="WIDTHxHEIGHT")
    a = ap.parse_args()
    W, H = (int(v) for v in a.size.split("x"))
    os.makedirs(a.out, exist_ok=True)
    rgb = picture(a.seed, W, H)
    im = Image.fromarray(rgb)
    files = {}

    def jpeg(name, image, **kw):
        path = os.path.join(a.out, name)
        image.save(path, "JPEG", **kw)
        files[name] = path

    jpeg("baseline_420.jpg", im, quality=85, subsampling=2)
    jpeg("baseline_444.jpg", im, quality=92, subsampling=0)
    jpeg("progressive_422.jpg", im, quality=80, subsampling=1, progressive=True)
    jpeg("gray.jpg", im.convert("L"), quality=88)
    jpeg("cmyk.jpg", im.convert("CMYK"), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    jpeg("exif_rotated.jpg", im, quality=85, exif=exif.tobytes())

    # 16-bit PNGs through OpenCV's own writer (BGR order); values spread over all 16 bits.
    rng = np.random.default_rng(a.seed + 1)
    deep = rgb.astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape, dtype=np.uint16)
    for name, data in [("rgb16.png", deep[..., ::-1]),
                       ("bgra16.png", np.concatenate(
                           [deep[..., ::-1], rng.integers(0, 65536, (H, W, 1), dtype=np.uint16)], -1)),
                       ("gray16.png", deep[..., 1])]:
        path = os.path.join(a.out, name)
        cv2.imwrite(path, np.ascontiguousarray(data))
        files[name] = path
    for name, image in [("rgba.png", Image.fromarray(np.concatenate(
                            [rgb, rng.integers(0, 256, (H, W, 1), dtype=np.uint8)], -1), "RGBA")),
                        ("bilevel.png", im.convert("1"))]:
        path = os.path.join(a.out, name)
        image.save(path)
        files[name] = path
    pal = im.quantize(colors=37)
    path = os.path.join(a.out, "palette.png")
    pal.save(path, transparency=3)
    files["palette.png"] = path

    # Further formats cv2.imread reads: BMP, WebP and PNM, and JPEGs of further chroma
    # subsamplings, each through OpenCV's
    # own writer where it has one (BGR order), else Pillow's.
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for name, data, params in [
            ("bmp_bgr.bmp", bgr, []),
            ("bmp_gray.bmp", rgb[..., 1].copy(), []),
            ("webp_lossy.webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 80]),
            ("webp_lossless.webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101]),
            ("pnm_rgb.ppm", bgr, []),
            ("pnm_gray.pgm", rgb[..., 2].copy(), []),
            ("pnm_rgb16.ppm", deep[..., ::-1].copy(), []),
            ("jpeg_411_restarts.jpg", bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411,
                                            cv2.IMWRITE_JPEG_RST_INTERVAL, 2]),
            ("jpeg_440_progressive.jpg", bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                               cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
                                               cv2.IMWRITE_JPEG_PROGRESSIVE, 1])]:
        path = os.path.join(a.out, name)
        if not cv2.imwrite(path, data, params):
            raise SystemExit(f"OpenCV cannot write {name}")
        files[name] = path
    rgba = Image.fromarray(np.concatenate([rgb, rng.integers(0, 256, (H, W, 1), dtype=np.uint8)], -1), "RGBA")
    for name, image, kw in [("bmp_rgba.bmp", rgba, {}), ("bmp_bilevel.bmp", im.convert("1"), {}),
                            ("webp_alpha_lossy.webp", rgba, {"quality": 75}),
                            ("pnm_bilevel.pbm", im.convert("1"), {})]:
        path = os.path.join(a.out, name)
        image.save(path, **kw)
        files[name] = path

    stems = [os.path.splitext(n)[0] for n in files]
    assert len(set(stems)) == len(stems), "each file needs its own stem for its .opencv.png"
    for name, path in sorted(files.items()):
        want = opencv_rgb(path)
        stem = os.path.splitext(name)[0]
        cv2.imwrite(os.path.join(a.out, f"{stem}.opencv.png"), want[..., ::-1])
        print(f"{name}: {os.path.getsize(path)} bytes, OpenCV {want.shape[1]}x{want.shape[0]}")
    print(f"OpenCV {cv2.__version__}, Pillow {Image.__version__}")


if __name__ == "__main__":
    main()
