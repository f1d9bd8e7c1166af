"""Point at the garment: the shopper drags a box on the uploaded photo and the search runs on
that region only.

The browser side is a few lines of JavaScript (run once when the page loads): a drag on the photo
draws a rectangle and writes its corners, in pixels of the photo as uploaded and shown upright,
into the "Region" field, then presses Search. Only those four numbers travel to the server, next
to the upload itself; `parse_region` refuses anything else, and the library crops the upload
(`Embedder.embed_one(image, box=...)`), refusing a box that reaches outside the photo.
"""

from __future__ import annotations

import re

from fashionrec_onnx.images import Box

MAX_REGION_CHARS = 64
_NUMBERS = re.compile(r"^\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*$")
REGION_HELP = "Drag a box on your photo to search for that part only (left, top, right, bottom in pixels)."


class RegionError(ValueError):
    """The region field holds something other than four whole numbers."""


def parse_region(text: str | None) -> Box | None:
    """``"l, t, r, b"`` to a box; empty means the whole photo."""
    if text is None or not str(text).strip():
        return None
    match = _NUMBERS.match(str(text)[: MAX_REGION_CHARS + 1])
    if len(str(text)) > MAX_REGION_CHARS or match is None:
        raise RegionError("The region must be four whole numbers: left, top, right, bottom.")
    left, top, right, bottom = (int(group) for group in match.groups())
    return left, top, right, bottom


# The overlay always shows what the Region field says (polled, so a value the server sets, such
# as "" after a new upload, is drawn too). The photo is shown with object-fit: scale-down, centred.
REGION_JS = """
() => {
  const field = () => document.querySelector('#region textarea, #region input');
  const photo = () => document.querySelector('#query .image-frame img');
  const geometry = (img) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(1, r.width / img.naturalWidth, r.height / img.naturalHeight);
    const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
    return {x: r.left + (r.width - w) / 2, y: r.top + (r.height - h) / 2, scale, w, h};
  };
  const toPixels = (img, e) => {
    const g = geometry(img);
    const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
    return [clamp(Math.round((e.clientX - g.x) / g.scale), img.naturalWidth),
            clamp(Math.round((e.clientY - g.y) / g.scale), img.naturalHeight)];
  };
  let drag = null, overlay = null;
  const draw = (box) => {
    const img = photo();
    if (!img || !img.naturalWidth || !box) { if (overlay) overlay.style.display = 'none'; return; }
    if (!overlay) {
      overlay = document.createElement('div');
      overlay.id = 'region-overlay';
      overlay.style.cssText = 'position:fixed;border:2px solid #f05a28;background:rgba(240,90,40,0.15);'
        + 'pointer-events:none;z-index:50;box-sizing:border-box;';
      document.body.appendChild(overlay);
    }
    const g = geometry(img);
    const [l, t, r, b] = box;
    Object.assign(overlay.style, {
      display: 'block', left: (g.x + l * g.scale) + 'px', top: (g.y + t * g.scale) + 'px',
      width: ((r - l) * g.scale) + 'px', height: ((b - t) * g.scale) + 'px'});
  };
  const fieldBox = () => {
    const f = field();
    const m = f && f.value.match(/^\\s*(\\d+)\\s*,\\s*(\\d+)\\s*,\\s*(\\d+)\\s*,\\s*(\\d+)\\s*$/);
    return m ? m.slice(1).map(Number) : null;
  };
  setInterval(() => { if (!drag) draw(fieldBox()); }, 200);
  document.addEventListener('pointerdown', (e) => {
    const img = photo();
    if (!img || e.target !== img || e.button !== 0) return;
    e.preventDefault();
    drag = {img, start: toPixels(img, e)};
  }, true);
  document.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const [x, y] = toPixels(drag.img, e);
    const [x0, y0] = drag.start;
    draw([Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)]);
  }, true);
  document.addEventListener('pointerup', (e) => {
    if (!drag) return;
    const [x, y] = toPixels(drag.img, e);
    const [x0, y0] = drag.start;
    drag = null;
    const box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    if (box[2] - box[0] < 2 || box[3] - box[1] < 2) return;  // a click, not a box
    const f = field();
    f.value = box.join(',');
    f.dispatchEvent(new Event('input', {bubbles: true}));
    draw(box);
    setTimeout(() => document.querySelector('#search').click(), 100);
  }, true);
  document.addEventListener('dragstart', (e) => { if (e.target === photo()) e.preventDefault(); }, true);
}
"""
