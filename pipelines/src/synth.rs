//! Synthetic wireframe sketches with ground truth (cargo feature `synth`).
//!
//! [`Sketch::generate`] draws a seeded, random but plausible wireframe the way a hand would:
//! rectangles with wobbly, jittered strokes 2–5 px wide, corners that overshoot or fall short,
//! small gaps in some edges, containers holding other elements, crossed boxes (image
//! placeholders, some with a cross that does not touch the box), text lines as cursive
//! scribbles split into words, buttons with a short label scribble, on light paper with a
//! gradient, grain and salt-and-pepper specks. The same seed and size always give the same
//! bytes.
//!
//! The ground truth lists every element with its kind, its box (the extent of its own ink, in
//! image pixels) and the index of its enclosing element. Elements never touch: siblings and a
//! container's children keep a gap of about 30 px (more on large images), which is what the
//! detector assumes of real sketches too.

use image::codecs::png::PngEncoder;
use image::{ImageEncoder, Rgb, RgbImage};

use crate::sketch::{ElementKind, Rect};

/// One element of a generated sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruthBox {
    /// What was drawn.
    pub kind: ElementKind,
    /// Extent of its ink, in image pixels.
    pub rect: Rect,
    /// Index of the enclosing element in the same list, if any.
    pub parent: Option<usize>,
}

/// Generator of synthetic sketches.
#[derive(Debug, Clone, Copy)]
pub struct Sketch;

impl Sketch {
    /// A PNG sketch of `width` × `height` (at least 320 × 240) and its ground truth.
    pub fn generate(seed: u64, width: u32, height: u32) -> (Vec<u8>, Vec<TruthBox>) {
        let (image, truth) = Sketch::render(seed, width, height);
        let mut png = Vec::new();
        let encoded = PngEncoder::new(&mut png).write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        );
        // Encoding an in-memory RGB buffer into a Vec cannot fail short of running out of
        // memory; an empty result would make any test using it fail loudly anyway.
        if encoded.is_err() {
            png.clear();
        }
        (png, truth)
    }

    /// The sketch as pixels (e.g. to encode as JPEG) and its ground truth.
    pub fn render(seed: u64, width: u32, height: u32) -> (RgbImage, Vec<TruthBox>) {
        let (width, height) = (width.max(320), height.max(240));
        let mut drawer = Drawer::new(seed, width, height);
        let margin = f64::from(width.min(height)) * 0.05;
        let page = Area {
            x: margin,
            y: margin,
            w: f64::from(width) - 2.0 * margin,
            h: f64::from(height) - 2.0 * margin,
        };
        drawer.fill(page, 0, None);
        drawer.finish()
    }
}

/// A sketch composed element by element, for fixtures and targeted tests: the same hand and
/// paper as [`Sketch::generate`], with the layout chosen by the caller. Coordinates are the
/// intended box in image pixels; the ground truth records where the ink actually went.
#[derive(Debug)]
pub struct Drawing {
    drawer: Drawer,
}

impl Drawing {
    /// An empty sheet; `seed` fixes the pen, wobble and paper.
    pub fn new(seed: u64, width: u32, height: u32) -> Self {
        Drawing {
            drawer: Drawer::new(seed, width.max(1), height.max(1)),
        }
    }

    /// A container box; returns its index, to pass as `parent` of what goes inside.
    pub fn container(&mut self, x: f64, y: f64, w: f64, h: f64, parent: Option<usize>) -> usize {
        let rect = self.drawer.outline(Area { x, y, w, h });
        self.drawer.push(ElementKind::Container, rect, parent)
    }

    /// A button, with a label scribble if `label`.
    pub fn button(
        &mut self,
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        label: bool,
        parent: Option<usize>,
    ) -> usize {
        self.drawer.draw_button(Area { x, y, w, h }, label, parent)
    }

    /// An input box.
    pub fn input(&mut self, x: f64, y: f64, w: f64, h: f64, parent: Option<usize>) -> usize {
        let rect = self.drawer.outline(Area { x, y, w, h });
        self.drawer.push(ElementKind::Input, rect, parent)
    }

    /// A crossed box (image placeholder).
    pub fn image(&mut self, x: f64, y: f64, w: f64, h: f64, parent: Option<usize>) -> usize {
        self.drawer.draw_image(Area { x, y, w, h }, false, parent)
    }

    /// A text line of `words` scribbled words, `h` tall, from `(x, y)` (top left) over `w`.
    pub fn text(
        &mut self,
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        words: u32,
        parent: Option<usize>,
    ) -> usize {
        let amp = (h - self.drawer.pen.width).max(2.0) / 2.0;
        let rect = self.drawer.scribble(x, y + h / 2.0, w, amp, words.max(1));
        self.drawer.push(ElementKind::Text, rect, parent)
    }

    /// The finished sketch on photographed paper, and its ground truth.
    pub fn finish(self) -> (RgbImage, Vec<TruthBox>) {
        self.drawer.finish()
    }

    /// The finished sketch as a flatbed scan: white, even, no grain, a few specks. Compresses
    /// far better than a photo, for small fixtures.
    pub fn finish_scan(mut self) -> (RgbImage, Vec<TruthBox>) {
        let image = scan(&self.drawer.canvas, &mut self.drawer.rng);
        (image, self.drawer.truth)
    }
}

/// A rectangle with fractional coordinates, for planning.
#[derive(Debug, Clone, Copy)]
struct Area {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Area {
    fn inset(&self, d: f64) -> Area {
        Area {
            x: self.x + d,
            y: self.y + d,
            w: self.w - 2.0 * d,
            h: self.h - 2.0 * d,
        }
    }
}

/// How this sketch's hand draws.
#[derive(Debug, Clone, Copy)]
struct Pen {
    /// Stroke width in pixels.
    width: f64,
    /// Largest sideways wander of a straight stroke.
    wobble: f64,
    /// Chance that a box edge has a small gap.
    gap_chance: f64,
}

#[derive(Debug)]
struct Drawer {
    canvas: Canvas,
    rng: Rng,
    pen: Pen,
    truth: Vec<TruthBox>,
    /// Size of UI elements relative to a 900 px sketch.
    scale: f64,
}

impl Drawer {
    fn new(seed: u64, width: u32, height: u32) -> Self {
        let mut rng = Rng::new(seed);
        let pen = Pen {
            width: rng.range(2.0, 5.0),
            wobble: rng.range(1.5, 3.0),
            gap_chance: rng.range(0.1, 0.35),
        };
        Drawer {
            canvas: Canvas::new(width, height),
            rng,
            pen,
            truth: Vec::new(),
            scale: (f64::from(width.min(height)) / 900.0).clamp(0.6, 2.0),
        }
    }

    fn finish(mut self) -> (RgbImage, Vec<TruthBox>) {
        (paper(&self.canvas, &mut self.rng), self.truth)
    }

    /// Gap between siblings, edge to edge.
    fn gap(&self) -> f64 {
        (34.0 * self.scale).max(32.0)
    }

    /// Space between a container's outline and its children.
    fn padding(&self) -> f64 {
        (28.0 * self.scale).max(28.0)
    }

    /// Fills `area` with rows of elements; returns how many were drawn directly inside it.
    fn fill(&mut self, area: Area, depth: u32, parent: Option<usize>) -> usize {
        let gap = self.gap();
        let mut drawn = 0;
        let mut y = area.y;
        let min_row = 50.0 * self.scale;
        while area.y + area.h - y >= min_row {
            let left = area.y + area.h - y;
            let tall = if depth == 0 { 0.45 } else { 0.7 };
            let row_h = self
                .rng
                .range(min_row, (left * tall).max(min_row).min(320.0 * self.scale));
            let row_h = if left - row_h < min_row + gap {
                left
            } else {
                row_h
            };
            let max_cells = ((area.w + gap) / (170.0 * self.scale + gap))
                .floor()
                .clamp(1.0, 3.0);
            let cells = self.rng.int(1, max_cells as u32);
            let cell_w = (area.w - gap * f64::from(cells - 1)) / f64::from(cells);
            for c in 0..cells {
                let cell = Area {
                    x: area.x + f64::from(c) * (cell_w + gap),
                    y,
                    w: cell_w,
                    h: row_h,
                };
                drawn += usize::from(self.cell(cell, depth, parent));
            }
            y += row_h + gap;
        }
        drawn
    }

    /// Draws one element in `cell`; false if nothing fitted.
    fn cell(&mut self, cell: Area, depth: u32, parent: Option<usize>) -> bool {
        let s = self.scale;
        let roomy = cell.w >= 230.0 * s && cell.h >= 170.0 * s;
        if depth < 2 && roomy && self.rng.chance(0.55) && self.container(cell, depth, parent) {
            return true;
        }
        let mut options: Vec<ElementKind> = vec![ElementKind::Text];
        if cell.w >= 70.0 && cell.h >= 70.0 * s.max(1.0) {
            options.push(ElementKind::Image);
        }
        if cell.w >= 6.0 * self.input_height().1 && cell.h >= self.input_height().1 {
            options.push(ElementKind::Input);
        }
        if cell.w >= 2.0 * self.button_height().1 && cell.h >= self.button_height().1 {
            options.push(ElementKind::Button);
        }
        let pick = self.rng.int(0, options.len() as u32 - 1) as usize;
        match options[pick] {
            ElementKind::Image => self.image(cell, parent),
            ElementKind::Input => self.input(cell, parent),
            ElementKind::Button => self.button(cell, parent),
            _ => self.text_block(cell, parent),
        };
        true
    }

    fn input_height(&self) -> (f64, f64) {
        ((32.0 * self.scale).max(32.0), (44.0 * self.scale).max(40.0))
    }

    fn button_height(&self) -> (f64, f64) {
        ((44.0 * self.scale).max(44.0), (60.0 * self.scale).max(52.0))
    }

    /// A box around `cell` with elements inside; undone (false) if nothing fits inside.
    fn container(&mut self, cell: Area, depth: u32, parent: Option<usize>) -> bool {
        let checkpoint = (self.canvas.cov.clone(), self.truth.len());
        let rect = self.outline(cell);
        let index = self.push(ElementKind::Container, rect, parent);
        let inner = cell.inset(self.padding());
        let children = self.fill(inner, depth + 1, Some(index));
        let text_only = self.truth[index + 1..]
            .iter()
            .filter(|t| t.parent == Some(index))
            .all(|t| t.kind == ElementKind::Text);
        if children == 0 || (children == 1 && text_only) {
            // A lone text line in a box reads as a button; keep containers unambiguous.
            self.canvas.cov = checkpoint.0;
            self.truth.truncate(checkpoint.1);
            return false;
        }
        true
    }

    fn image(&mut self, cell: Area, parent: Option<usize>) -> usize {
        let w = cell.w * self.rng.range(0.5, 1.0);
        let h = (w * self.rng.range(0.55, 1.2)).clamp(60.0_f64.min(cell.h), cell.h);
        let area = self.place(cell, w, h);
        let detached = self.rng.chance(0.2);
        self.draw_image(area, detached, parent)
    }

    /// A crossed box. Most crosses run corner to corner and touch the box; a `detached` one
    /// floats free inside it.
    fn draw_image(&mut self, area: Area, detached: bool, parent: Option<usize>) -> usize {
        let mut rect = self.outline(area);
        let inset = if detached {
            self.pen.width + self.rng.range(7.0, 10.0)
        } else {
            self.pen.width * 0.5 + self.rng.range(0.0, 2.0)
        };
        let a = area.inset(inset);
        self.canvas.extent = None;
        self.stroke((a.x, a.y), (a.x + a.w, a.y + a.h), false);
        self.stroke((a.x + a.w, a.y), (a.x, a.y + a.h), false);
        if let Some(cross) = self.canvas.extent {
            rect = rect.union(&cross);
        }
        self.push(ElementKind::Image, rect, parent)
    }

    fn input(&mut self, cell: Area, parent: Option<usize>) -> usize {
        let (lo, hi) = self.input_height();
        let h = self.rng.range(lo, hi).min(cell.h);
        let w = (cell.w * self.rng.range(0.7, 1.0)).max(6.0 * h).min(cell.w);
        let area = self.place(cell, w, h);
        let rect = self.outline(area);
        self.push(ElementKind::Input, rect, parent)
    }

    fn button(&mut self, cell: Area, parent: Option<usize>) -> usize {
        let (lo, hi) = self.button_height();
        let h = self.rng.range(lo, hi).min(cell.h);
        let w = (h * self.rng.range(1.8, 3.2)).min(cell.w);
        let area = self.place(cell, w, h);
        let label = self.rng.chance(0.7);
        self.draw_button(area, label, parent)
    }

    /// A box, with a short label scribble in the middle if `label`.
    fn draw_button(&mut self, area: Area, label: bool, parent: Option<usize>) -> usize {
        let rect = self.outline(area);
        let index = self.push(ElementKind::Button, rect, parent);
        // Short, centred, well clear of the outline.
        let label_w = (area.w - 2.0 * (22.0 + self.pen.width)) * self.rng.range(0.5, 0.9);
        if label && label_w >= 16.0 {
            let amp = self.rng.range(3.5, 5.0);
            let x = area.x + (area.w - label_w) / 2.0;
            let rect = self.scribble(x, area.y + area.h / 2.0, label_w, amp, 1);
            self.push(ElementKind::Text, rect, Some(index));
        }
        index
    }

    fn push(&mut self, kind: ElementKind, rect: Rect, parent: Option<usize>) -> usize {
        self.truth.push(TruthBox { kind, rect, parent });
        self.truth.len() - 1
    }

    /// One to three text lines stacked in `cell`; returns the index of the last.
    fn text_block(&mut self, cell: Area, parent: Option<usize>) -> usize {
        let amp = self.rng.range(4.0, 7.0) * self.scale.sqrt();
        let line_h = 2.0 * amp + self.pen.width;
        let spacing = line_h + self.rng.range(16.0, 24.0);
        let fit = ((cell.h - line_h) / spacing).floor() as u32 + 1;
        let lines = self.rng.int(1, fit.clamp(1, 3));
        let block_h = line_h + spacing * f64::from(lines - 1);
        let top = cell.y + (cell.h - block_h) * self.rng.range(0.0, 1.0).min(0.5);
        let mut last = self.truth.len();
        for i in 0..lines {
            let w = (cell.w * self.rng.range(0.35, 1.0)).max(40.0_f64.min(cell.w));
            let x = cell.x + (cell.w - w) * self.align();
            let yc = top + line_h / 2.0 + spacing * f64::from(i);
            let words = self.rng.int(1, 4);
            let rect = self.scribble(x, yc, w, amp, words);
            last = self.push(ElementKind::Text, rect, parent);
        }
        last
    }

    /// A `w` × `h` area inside `cell`: left, centred or right, top or middle.
    fn place(&mut self, cell: Area, w: f64, h: f64) -> Area {
        let x = cell.x + (cell.w - w) * self.align();
        let y = cell.y + (cell.h - h) * if self.rng.chance(0.5) { 0.0 } else { 0.5 };
        Area { x, y, w, h }
    }

    /// Horizontal placement: mostly left, sometimes centred or right.
    fn align(&mut self) -> f64 {
        match self.rng.int(0, 3) {
            0 | 1 => 0.0,
            2 => 0.5,
            _ => 1.0,
        }
    }

    /// A hand-drawn rectangle around `area`; returns its ink extent.
    fn outline(&mut self, area: Area) -> Rect {
        let jitter = |rng: &mut Rng, (x, y): (f64, f64)| {
            (x + rng.range(-1.5, 1.5), y + rng.range(-1.5, 1.5))
        };
        let tl = jitter(&mut self.rng, (area.x, area.y));
        let tr = jitter(&mut self.rng, (area.x + area.w, area.y));
        let br = jitter(&mut self.rng, (area.x + area.w, area.y + area.h));
        let bl = jitter(&mut self.rng, (area.x, area.y + area.h));
        self.canvas.extent = None;
        for (a, b) in [(tl, tr), (tr, br), (br, bl), (bl, tl)] {
            let (a, b) = self.overshoot(a, b);
            self.stroke(a, b, true);
        }
        self.canvas.extent.unwrap_or_default()
    }

    /// Moves the ends of a box edge past the corner (overshoot) or just short of it.
    fn overshoot(&mut self, a: (f64, f64), b: (f64, f64)) -> ((f64, f64), (f64, f64)) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt().max(1.0);
        let (ux, uy) = ((b.0 - a.0) / len, (b.1 - a.1) / len);
        let start = self.rng.range(-1.0, 3.0);
        let end = self.rng.range(-1.0, 3.0);
        (
            (a.0 - ux * start, a.1 - uy * start),
            (b.0 + ux * end, b.1 + uy * end),
        )
    }

    /// A straight stroke from `a` to `b` that wanders sideways; box edges may have a gap.
    fn stroke(&mut self, a: (f64, f64), b: (f64, f64), may_gap: bool) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt().max(1.0);
        let (nx, ny) = (-(b.1 - a.1) / len, (b.0 - a.0) / len);
        let tau = std::f64::consts::TAU;
        let (a1, f1, p1) = (
            self.rng.range(0.3, 1.0) * self.pen.wobble,
            self.rng.range(0.5, 1.5),
            self.rng.range(0.0, tau),
        );
        let (a2, f2, p2) = (
            self.rng.range(0.0, 0.5),
            len / self.rng.range(25.0, 60.0),
            self.rng.range(0.0, tau),
        );
        let wander = |t: f64| a1 * (tau * f1 * t + p1).sin() + a2 * (tau * f2 * t + p2).sin();
        // Pinned at both ends, so corners still meet.
        let (w0, w1) = (wander(0.0), wander(1.0));
        let gap = (may_gap && self.rng.chance(self.pen.gap_chance)).then(|| {
            let centre = self.rng.range(0.25, 0.75);
            let half = (self.rng.range(2.0, 5.0) + self.pen.width) / 2.0 / len;
            (centre - half, centre + half)
        });
        let steps = (len / 0.6).ceil() as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            if gap.is_some_and(|(g0, g1)| t > g0 && t < g1) {
                continue;
            }
            let off = wander(t) - (w0 + (w1 - w0) * t);
            let x = a.0 + (b.0 - a.0) * t + nx * off;
            let y = a.1 + (b.1 - a.1) * t + ny * off;
            self.canvas.stamp(x, y, self.pen.width / 2.0);
        }
    }

    /// A cursive scribble of `words` words along `y = yc` from `x` over `w`, `amp` up and down;
    /// returns its ink extent. Word gaps stay under a line height, as in handwriting.
    fn scribble(&mut self, x: f64, yc: f64, w: f64, amp: f64, words: u32) -> Rect {
        let line_h = 2.0 * amp + self.pen.width;
        let gap = line_h * self.rng.range(0.4, 0.75);
        let words = if w < f64::from(words) * (2.0 * line_h + gap) {
            1
        } else {
            words
        };
        let word_w = (w - gap * f64::from(words - 1)) / f64::from(words);
        let width = (self.pen.width * 0.6).clamp(2.0, 3.0);
        let period = self.rng.range(7.0, 11.0);
        let phase = self.rng.range(0.0, std::f64::consts::TAU);
        self.canvas.extent = None;
        for k in 0..words {
            let x0 = x + f64::from(k) * (word_w + gap);
            let mut t = 0.0;
            while t <= word_w {
                let wave = (std::f64::consts::TAU * t / period + phase).sin();
                // Letters differ in height: the swing breathes along the word.
                let swing = 0.8 + 0.2 * (t / (2.7 * period) + phase).sin();
                let y = yc + (amp - width / 2.0) * swing * wave;
                self.canvas.stamp(x0 + t, y, width / 2.0);
                t += 0.4;
            }
        }
        self.canvas.extent.unwrap_or_default()
    }
}

/// Ink coverage (0..=1) per pixel, and the extent of what was stamped since `extent` was
/// last cleared.
#[derive(Debug)]
struct Canvas {
    width: u32,
    height: u32,
    cov: Vec<f32>,
    extent: Option<Rect>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Canvas {
            width,
            height,
            cov: vec![0.0; width as usize * height as usize],
            extent: None,
        }
    }

    /// An anti-aliased disc of radius `r` at `(cx, cy)`.
    fn stamp(&mut self, cx: f64, cy: f64, r: f64) {
        let x0 = (cx - r - 1.0).floor().max(0.0) as u32;
        let y0 = (cy - r - 1.0).floor().max(0.0) as u32;
        let x1 = ((cx + r + 1.0).ceil() as u32).min(self.width);
        let y1 = ((cy + r + 1.0).ceil() as u32).min(self.height);
        for y in y0..y1 {
            for x in x0..x1 {
                let d =
                    ((f64::from(x) + 0.5 - cx).powi(2) + (f64::from(y) + 0.5 - cy).powi(2)).sqrt();
                let c = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
                if c <= 0.0 {
                    continue;
                }
                let cell = &mut self.cov[y as usize * self.width as usize + x as usize];
                *cell = cell.max(c);
                if c >= 0.5 {
                    let px = Rect { x, y, w: 1, h: 1 };
                    self.extent = Some(self.extent.map_or(px, |e| e.union(&px)));
                }
            }
        }
    }
}

/// Composes the ink onto paper: a tinted light background with a gradient and grain, dark
/// ink, and salt-and-pepper specks.
fn paper(canvas: &Canvas, rng: &mut Rng) -> RgbImage {
    let (w, h) = (canvas.width, canvas.height);
    let base = rng.range(218.0, 245.0);
    let fall = rng.range(8.0, 25.0);
    let angle = rng.range(0.0, std::f64::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let diag = f64::from(w).hypot(f64::from(h));
    let ink = rng.range(30.0, 90.0);
    let specks = rng.range(0.0005, 0.002);
    let mut image = RgbImage::new(w, h);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let along = (f64::from(x) * dx + f64::from(y) * dy) / diag;
        let paper = base - fall * (0.5 + 0.5 * along) + rng.range(-3.0, 3.0);
        let c = f64::from(canvas.cov[y as usize * w as usize + x as usize]);
        let mut v = paper * (1.0 - c) + ink * c;
        let roll = rng.unit();
        if roll < specks {
            v = if roll < specks / 2.0 { ink } else { 255.0 };
        }
        *pixel = tint(v);
    }
    // A few larger specks (dust, pencil dots) that a 3×3 median keeps.
    for _ in 0..rng.int(3, 12) {
        let (sx, sy) = (
            rng.int(0, w.saturating_sub(3)),
            rng.int(0, h.saturating_sub(3)),
        );
        for y in sy..(sy + 3).min(h) {
            for x in sx..(sx + 3).min(w) {
                image.put_pixel(x, y, tint(ink));
            }
        }
    }
    image
}

/// Ink on white: what a scanner makes of the sheet.
fn scan(canvas: &Canvas, rng: &mut Rng) -> RgbImage {
    let ink = rng.range(20.0, 60.0);
    let mut image = RgbImage::new(canvas.width, canvas.height);
    for (pixel, &c) in image.pixels_mut().zip(&canvas.cov) {
        let v = (250.0 * (1.0 - f64::from(c)) + ink * f64::from(c)).round() as u8;
        *pixel = Rgb([v, v, v]);
    }
    for _ in 0..rng.int(10, 30) {
        let (x, y) = (rng.int(0, canvas.width - 1), rng.int(0, canvas.height - 1));
        image.put_pixel(x, y, Rgb([90, 90, 90]));
    }
    image
}

/// A slightly warm grey, as paper photographs come out.
fn tint(v: f64) -> Rgb<u8> {
    let channel = |d: f64| (v + d).round().clamp(0.0, 255.0) as u8;
    Rgb([channel(3.0), channel(1.0), channel(-4.0)])
}

/// SplitMix64: tiny, fast, and the same numbers on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_5EED_5EED_5EED)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..1`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sketch() {
        let a = Sketch::generate(7, 640, 480);
        let b = Sketch::generate(7, 640, 480);
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_ne!(a.0, Sketch::generate(8, 640, 480).0);
    }

    #[test]
    fn ground_truth_parents_enclose_their_children() {
        for seed in 0..20 {
            let (_, truth) = Sketch::render(seed, 1024, 768);
            assert!(!truth.is_empty());
            for t in &truth {
                if let Some(p) = t.parent {
                    assert!(truth[p].rect.contains(&t.rect, 0), "seed {seed}: {t:?}");
                }
            }
        }
    }
}
