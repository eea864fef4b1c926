//! What a clip shows: a person figure doing one of six actions while drifting
//! left or right, wearing a coloured shirt, with one to four objects on the
//! floor (exactly one ball), over a random two-tone background; and how each
//! frame of it is drawn.

use super::canvas::{Canvas, Rgb};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;

/// The actions, as answered.
pub const ACTIONS: [&str; 6] = ["walking", "jumping", "waving", "turning", "sitting", "packing"];

/// Shirt and object colours, as answered.
pub const COLOURS: [(&str, Rgb); 6] = [
    ("red", [0.85, 0.08, 0.08]),
    ("green", [0.08, 0.65, 0.12]),
    ("blue", [0.1, 0.22, 0.92]),
    ("yellow", [0.95, 0.85, 0.08]),
    ("purple", [0.58, 0.12, 0.72]),
    ("orange", [1.0, 0.52, 0.02]),
];

/// Object counts, as answered.
pub const COUNTS: [&str; 4] = ["one", "two", "three", "four"];

const SKIN: Rgb = [0.92, 0.76, 0.62];
const TROUSERS: Rgb = [0.18, 0.18, 0.24];
const BOX: Rgb = [0.55, 0.36, 0.16];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Ball,
    Square,
    Triangle,
}

/// A static object on the floor.
#[derive(Clone, Debug)]
pub struct Object {
    pub shape: Shape,
    pub colour: usize,
    pub x: f32,
    pub y: f32,
    pub size: f32,
}

/// Everything random about one clip.
#[derive(Clone, Debug)]
pub struct Scene {
    pub action: usize,
    pub shirt: usize,
    /// -1 = moving left, +1 = moving right.
    pub direction: f32,
    pub objects: Vec<Object>,
    sky_top: Rgb,
    sky_bottom: Rgb,
    floor: Rgb,
    horizon: f32,
    start_x: f32,
    scale: f32,
    pub brightness: f32,
    pub noise: f32,
}

fn muted(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> Rgb {
    let grey = rng.gen_range(lo..hi);
    [0, 1, 2].map(|_| grey * 0.6 + rng.gen_range(lo..hi) * 0.4)
}

impl Scene {
    /// Draws a scene; `size` is the frame side in pixels.
    pub fn sample(rng: &mut ChaCha8Rng, size: usize) -> Self {
        let s = size as f32;
        let action = rng.gen_range(0..ACTIONS.len());
        let shirt = rng.gen_range(0..COLOURS.len());
        let direction = if rng.gen_bool(0.5) { -1.0 } else { 1.0 };
        let horizon = rng.gen_range(0.45..0.6);
        let count = rng.gen_range(1..=COUNTS.len());
        let ball = rng.gen_range(0..count);
        // Objects sit in the foreground strip, in distinct slots so they never overlap.
        let mut slots: Vec<usize> = (0..6).collect();
        let objects = (0..count)
            .map(|i| {
                let slot = slots.remove(rng.gen_range(0..slots.len()));
                let shape = if i == ball {
                    Shape::Ball
                } else if rng.gen_bool(0.5) {
                    Shape::Square
                } else {
                    Shape::Triangle
                };
                Object {
                    shape,
                    colour: rng.gen_range(0..COLOURS.len()),
                    x: s * (0.1 + 0.16 * slot as f32) + rng.gen_range(-0.02..0.02) * s,
                    y: s * rng.gen_range(0.88..0.93),
                    size: s * rng.gen_range(0.08..0.1),
                }
            })
            .collect();
        let travel = if action == 0 { 0.4 } else { 0.16 };
        let start_x =
            if direction > 0.0 { rng.gen_range(0.18..0.82 - travel) } else { rng.gen_range(0.18 + travel..0.82) };
        Scene {
            action,
            shirt,
            direction,
            objects,
            sky_top: muted(rng, 0.35, 0.85),
            sky_bottom: muted(rng, 0.35, 0.85),
            floor: muted(rng, 0.2, 0.5),
            horizon,
            start_x: start_x * s,
            scale: s,
            brightness: rng.gen_range(0.85..1.1),
            noise: rng.gen_range(0.02..0.05),
        }
    }

    /// Draws frame `t` of `frames`.
    pub fn draw(&self, canvas: &mut Canvas, t: usize, frames: usize) {
        let s = self.scale;
        let p = t as f32 / (frames.max(2) - 1) as f32;
        canvas.background(self.sky_top, self.sky_bottom, self.floor, self.horizon);
        let travel = if self.action == 0 { 0.4 } else { 0.16 } * s;
        let x = self.start_x + self.direction * travel * p;
        let feet = s * (self.horizon + 0.2);
        let h = 0.42 * s;
        let shirt = COLOURS[self.shirt].1;
        let limb = (0.045 * s).max(1.5);
        let (mut lift, mut hip_drop, mut torso_w) = (0.0, 0.0, 0.3 * h);
        let mut legs = [(-0.08 * h, 0.0), (0.08 * h, 0.0)]; // foot offsets (dx, dy) from below the hip
        let mut hands = [(-0.22 * h, 0.42 * h), (0.22 * h, 0.42 * h)]; // hand offsets from the shoulder
        match ACTIONS[self.action] {
            "walking" => {
                let a = (2.0 * PI * 2.0 * p).sin();
                legs = [(-0.2 * h * a, 0.0), (0.2 * h * a, 0.0)];
                hands = [(0.18 * h * a, 0.4 * h), (-0.18 * h * a, 0.4 * h)];
            }
            "jumping" => {
                let j = (2.0 * PI * 2.0 * p).sin().max(0.0);
                lift = 0.28 * h * j;
                hands =
                    [(-0.25 * h, -0.3 * h * j + 0.4 * h * (1.0 - j)), (0.25 * h, -0.3 * h * j + 0.4 * h * (1.0 - j))];
            }
            "waving" => {
                let a = PI * (0.5 + 0.3 * (2.0 * PI * 3.0 * p).sin());
                hands[1] = (0.35 * h * a.cos(), -0.38 * h * a.sin());
            }
            "turning" => {
                torso_w = 0.3 * h * (PI * p).cos().abs().max(0.25);
                hands = [(-torso_w * 0.75, 0.42 * h), (torso_w * 0.75, 0.42 * h)];
            }
            "sitting" => {
                let q = p * p * (3.0 - 2.0 * p);
                hip_drop = 0.28 * h * q;
                legs =
                    [(-0.08 * h + 0.3 * h * q * self.direction, 0.0), (0.08 * h + 0.3 * h * q * self.direction, 0.0)];
            }
            "packing" => {
                let reach = (2.0 * PI * 2.0 * p).sin().max(0.0);
                let side = 0.32 * h * self.direction;
                hands = [(side * 0.8, 0.42 * h + 0.25 * h * reach), (side, 0.42 * h + 0.25 * h * reach)];
            }
            _ => unreachable!("actions are listed above"),
        }
        let hip_y = feet - 0.45 * h + hip_drop - lift;
        let shoulder_y = feet - 0.8 * h + hip_drop - lift;
        for (dx, dy) in legs {
            canvas.line(x, hip_y, x + dx, feet - lift + dy, limb * 1.2, TROUSERS);
        }
        canvas.rect(x - torso_w / 2.0, shoulder_y, x + torso_w / 2.0, hip_y, shirt);
        for (dx, dy) in hands {
            let sx = x + dx.signum() * torso_w / 2.0;
            canvas.line(sx, shoulder_y + 0.03 * h, x + dx, shoulder_y + dy, limb, SKIN);
        }
        canvas.disc(x, shoulder_y - 0.12 * h, 0.1 * h, SKIN);
        if ACTIONS[self.action] == "packing" {
            // The box stays where packing started; its lid closes over the clip.
            let bx = self.start_x + self.direction * 0.38 * h;
            let (bw, bh) = (0.3 * h, 0.24 * h);
            canvas.rect(bx - bw / 2.0, feet - bh, bx + bw / 2.0, feet, BOX);
            let angle = (1.0 - p) * PI / 2.0;
            let lid = bw * 0.5;
            canvas.line(
                bx - bw / 2.0,
                feet - bh,
                bx - bw / 2.0 + lid * angle.cos(),
                feet - bh - lid * angle.sin(),
                limb,
                BOX,
            );
        }
        for o in &self.objects {
            let c = COLOURS[o.colour].1;
            match o.shape {
                Shape::Ball => canvas.disc(o.x, o.y - o.size / 2.0, o.size / 2.0, c),
                Shape::Square => canvas.rect(o.x - o.size / 2.0, o.y - o.size, o.x + o.size / 2.0, o.y, c),
                Shape::Triangle => canvas.triangle(o.x, o.y, o.size * 1.1, c),
            }
        }
    }

    /// Colour name of the ball.
    pub fn ball_colour(&self) -> &'static str {
        let ball = self.objects.iter().find(|o| o.shape == Shape::Ball).expect("every scene has one ball");
        COLOURS[ball.colour].0
    }
}
