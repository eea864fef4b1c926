//! A tiny float RGB rasteriser: just the primitives the clip renderer needs
//! (gradient fill, rectangles, discs, thick lines), drawn in pixel
//! coordinates with coverage-free edges; noise and quantisation come last.

/// An RGB colour with components in [0, 1].
pub type Rgb = [f32; 3];

/// An image being drawn, row-major, 3 floats per pixel.
pub struct Canvas {
    pub size: usize,
    px: Vec<f32>,
}

impl Canvas {
    pub fn new(size: usize) -> Self {
        Canvas { size, px: vec![0.0; size * size * 3] }
    }

    fn put(&mut self, x: i64, y: i64, c: Rgb) {
        let s = self.size as i64;
        if x >= 0 && y >= 0 && x < s && y < s {
            let i = (y as usize * self.size + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Vertical gradient from `top` to `bottom` above `horizon` (a fraction of the height), `floor` below.
    pub fn background(&mut self, top: Rgb, bottom: Rgb, floor: Rgb, horizon: f32) {
        let s = self.size;
        let h = (horizon * s as f32) as usize;
        for y in 0..s {
            let c = if y >= h {
                floor
            } else {
                let t = y as f32 / h.max(1) as f32;
                [0, 1, 2].map(|k| top[k] * (1.0 - t) + bottom[k] * t)
            };
            for x in 0..s {
                let i = (y * s + x) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Axis-aligned rectangle from (x0, y0) to (x1, y1), in pixels.
    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb) {
        let (xa, xb) = (x0.min(x1).round() as i64, x0.max(x1).round() as i64);
        let (ya, yb) = (y0.min(y1).round() as i64, y0.max(y1).round() as i64);
        for y in ya..=yb {
            for x in xa..=xb {
                self.put(x, y, c);
            }
        }
    }

    /// Filled disc.
    pub fn disc(&mut self, cx: f32, cy: f32, r: f32, c: Rgb) {
        let r2 = r * r;
        for y in (cy - r).floor() as i64..=(cy + r).ceil() as i64 {
            for x in (cx - r).floor() as i64..=(cx + r).ceil() as i64 {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                if dx * dx + dy * dy <= r2 {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// Filled triangle pointing up, base centred at (cx, base_y).
    pub fn triangle(&mut self, cx: f32, base_y: f32, w: f32, c: Rgb) {
        let h = w;
        for y in (base_y - h).floor() as i64..=base_y.ceil() as i64 {
            let frac = (base_y - y as f32) / h;
            let half = w * 0.5 * (1.0 - frac).max(0.0);
            for x in (cx - half).round() as i64..=(cx + half).round() as i64 {
                self.put(x, y, c);
            }
        }
    }

    /// A line of thickness `t` from (x0, y0) to (x1, y1).
    pub fn line(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, t: f32, c: Rgb) {
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let steps = (len * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let f = i as f32 / steps as f32;
            self.disc(x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, t * 0.5, c);
        }
    }

    /// Adds Gaussian-ish noise (sum of uniforms) of standard deviation `sigma`, scales
    /// brightness, and quantises to RGB bytes.
    pub fn to_rgb8(&self, sigma: f32, brightness: f32, mut uniform: impl FnMut() -> f32) -> Vec<u8> {
        self.px
            .iter()
            .map(|&v| {
                // Irwin-Hall(3) around 0 has variance 1/4: scale by 2 sigma.
                let n = (uniform() + uniform() + uniform() - 1.5) * 2.0 * sigma;
                ((v * brightness + n).clamp(0.0, 1.0) * 255.0).round() as u8
            })
            .collect()
    }
}
