#!/usr/bin/env python3
"""Reference decoders for qrbench: ZBar (pyzbar -> libzbar0) and ZXing-C++ (zxing-cpp).

Usage: ref_decoders.py MANIFEST_TSV [REPEAT]

For every image in the manifest (file, class, expected texts...; TAB-separated) it loads the PNG
once as 8-bit grayscale, then times only the decode call of each library, so neither process start
nor PNG decoding is counted, as for phygate: `ms` is the thread's CPU time (time.thread_time_ns;
both libraries decode on the calling thread), robust to other jobs on a shared machine, `wall_ms`
the wall clock (time.perf_counter_ns). Both are restricted to QR codes, as phygate reads nothing
else. Output, one line per image and decoder, TAB-separated:

    file  decoder  found  wrong  ms  wall_ms

found = expected texts decoded (first decode), wrong = decoded texts that were not expected;
ms and wall_ms are the medians of REPEAT decodes (default 3), as in qrbench.
"""
import sys
import time
from pathlib import Path

import numpy as np
import zxingcpp
from PIL import Image
from pyzbar.pyzbar import ZBarSymbol
from pyzbar.pyzbar import decode as zbar_decode


def zbar(img):
    return [r.data.decode("utf-8", errors="replace") for r in zbar_decode(img, symbols=[ZBarSymbol.QRCODE])]


def zxing(img):
    return [r.text for r in zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode)]


def main():
    manifest = Path(sys.argv[1])
    repeat = max(1, int(sys.argv[2])) if len(sys.argv) > 2 else 3
    rows = [line.rstrip("\n").split("\t") for line in manifest.read_text().splitlines() if line.strip()]
    images = []
    for row in rows:
        arr = np.asarray(Image.open(manifest.parent / row[0]).convert("L"))
        images.append((row[0], set(row[2:]), arr))
    decoders = [("zbar", zbar), ("zxing", zxing)]
    # Warm-up: first-call costs (lazy library set-up, caches) are not per-frame costs.
    for _, fn in decoders:
        fn(images[0][2])
    out = sys.stdout
    for name, fn in decoders:
        for file, expected, arr in images:
            times, texts = [], None
            for _ in range(repeat):
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                got_now = fn(arr)
                times.append(((time.thread_time_ns() - c0) / 1e6, (time.perf_counter_ns() - t0) / 1e6))
                texts = got_now if texts is None else texts
            ms = sorted(t[0] for t in times)[len(times) // 2]
            wall_ms = sorted(t[1] for t in times)[len(times) // 2]
            got = set(texts)
            out.write(f"{file}\t{name}\t{len(got & expected)}\t{len(got - expected)}\t{ms:.3f}\t{wall_ms:.3f}\n")
    out.flush()


if __name__ == "__main__":
    main()
