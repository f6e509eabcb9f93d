// Boxes drawn over an image on a canvas: [x, y, w, h] in image pixels, a label on each.
"use strict";

const Boxes = (() => {
  // Draws `image` scaled to fit `maxWidth`, then `boxes` ({bbox, label, index}); the canvas's
  // data-boxes attribute holds how many it drew.
  function draw(canvas, image, boxes, maxWidth) {
    // Small images are shown up to twice their size, so their boxes and labels stay legible.
    const scale = Math.min(2, maxWidth / image.naturalWidth) || 1;
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    const line = Math.max(1.5, canvas.width / 300);
    ctx.font = `${Math.max(11, Math.round(canvas.width / 45))}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const box of boxes) {
      const [x, y, w, h] = box.bbox.map((v) => v * scale);
      const colour = RN.colour(box.index);
      ctx.lineWidth = line;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x, y, w, h);
      if (box.label) {
        const tw = ctx.measureText(box.label).width + 6;
        const th = parseInt(ctx.font, 10) + 4;
        const ty = y - th >= 0 ? y - th : y;
        ctx.fillStyle = colour;
        ctx.fillRect(x - line / 2, ty, tw, th);
        ctx.fillStyle = "#fff";
        ctx.fillText(box.label, x + 3 - line / 2, ty + 2);
      }
    }
    canvas.dataset.boxes = String(boxes.length);
  }

  function load(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`cannot load ${src}`));
      img.src = src;
    });
  }

  return { draw, load };
})();
