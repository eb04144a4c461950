//! Stage `detect`: UI elements from the ink mask.
//!
//! 1. Close small gaps in the strokes by dilating the mask, then take connected components.
//! 2. A component is a *box* when its strokes cover all four sides of its bounding box (within
//!    a band that absorbs wobble and a slight tilt) and leave a hole in the middle.
//! 3. Every other component is a *stroke* (thin: a text candidate) or a *blob* (anything else).
//! 4. Nesting comes from bounding-box containment: each item's parent is the smallest box
//!    around it.
//! 5. A box whose two diagonals are inked (by its own strokes or by a loose blob inside it) is
//!    an image placeholder; blobs and strokes inside it belong to the cross.
//! 6. Strokes under the same parent that share a baseline and are a word gap apart merge into
//!    text lines.
//! 7. Boxes are classified by children and shape: container, input, button.
//!
//! It assumes what hand-drawn wireframes look like: separate elements do not touch (a gap of
//! about 8 px or more at working resolution) and boxes are roughly axis-aligned.

use super::components::{label, Component, Labels};
use super::geometry::Rect;
use super::mask::Mask;
use super::ElementKind;

/// Dilation radius: closes gaps of up to twice this in a stroke.
const GAP_RADIUS: u32 = 3;
/// Components with less ink than this are specks.
const MIN_INK_PIXELS: u32 = 20;
/// A box's shorter side is at least this long.
const MIN_BOX_SIDE: u32 = 24;
/// Share of each side of a box that its strokes must cover.
const SIDE_COVERAGE: f64 = 0.8;
/// Share of a box's interior (inside the side bands) that its own strokes must leave empty.
const MIN_HOLE: f64 = 0.3;
/// Share of each diagonal that must be inked for a crossed box.
const DIAGONAL_COVERAGE: f64 = 0.8;
/// Strokes may stick out of their parent box by this much.
const CONTAIN_SLACK: u32 = 3;
/// Mean thickness of a box's strokes (ink over perimeter) above which it is no pen outline:
/// e.g. the dark ring the threshold leaves where a photographed sheet meets the table.
const MAX_STROKE: f64 = 14.0;
/// Input boxes are at least this many times wider than tall.
const INPUT_ASPECT: f64 = 4.5;

/// A detected element, in working-image pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub kind: ElementKind,
    pub rect: Rect,
    /// Index of the enclosing element in the same list.
    pub parent: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Speck,
    Box,
    Stroke,
    Blob,
}

/// Scale-dependent limits, from the working image size.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Tallest text line.
    text_height: u32,
    /// Tallest button or input; taller empty boxes are containers.
    control_height: u32,
}

impl Limits {
    fn for_size(width: u32, height: u32) -> Self {
        let short = width.min(height);
        Limits {
            text_height: (short / 15).max(24),
            control_height: (short / 8).max(72),
        }
    }
}

/// Finds the elements of a binarized sketch, in reading order (top to bottom, left to right).
pub(crate) fn detect(ink: &Mask) -> Vec<Element> {
    let closed = ink.dilate(GAP_RADIUS);
    let labels = label(&closed, ink);
    let limits = Limits::for_size(ink.width, ink.height);
    let shapes: Vec<Shape> = labels
        .components
        .iter()
        .map(|c| shape_of(c, limits))
        .collect();

    let boxes: Vec<usize> = indices_of(&shapes, Shape::Box);
    let box_rects: Vec<Rect> = boxes
        .iter()
        .map(|&i| labels.components[i].ink_rect)
        .collect();
    let parent_of = |rect: &Rect, own: Option<usize>| smallest_container(&box_rects, rect, own);

    let blob_parents: Vec<(usize, Option<usize>)> = indices_of(&shapes, Shape::Blob)
        .into_iter()
        .map(|i| (i, parent_of(&labels.components[i].ink_rect, None)))
        .collect();
    let crossed: Vec<bool> = boxes
        .iter()
        .enumerate()
        .map(|(b, &c)| {
            let loose: Vec<u32> = blob_parents
                .iter()
                .filter(|(_, p)| *p == Some(b))
                .map(|(i, _)| *i as u32)
                .collect();
            is_crossed(&labels, c as u32, &loose, box_rects[b])
        })
        .collect();

    let strokes: Vec<(Rect, Option<usize>)> = indices_of(&shapes, Shape::Stroke)
        .into_iter()
        .map(|i| labels.components[i].ink_rect)
        .map(|r| (r, parent_of(&r, None)))
        .filter(|(_, p)| p.is_none_or(|b| !crossed[b]))
        .collect();
    let lines = merge_text_lines(&strokes, limits.text_height);

    let box_parents: Vec<Option<usize>> = (0..boxes.len())
        .map(|b| parent_of(&box_rects[b], Some(b)))
        .collect();
    let kinds: Vec<ElementKind> = (0..boxes.len())
        .map(|b| {
            let box_children = box_parents.iter().filter(|p| **p == Some(b)).count();
            let text_children = lines.iter().filter(|(_, p)| *p == Some(b)).count();
            box_kind(
                box_rects[b],
                crossed[b],
                box_children,
                text_children,
                limits,
            )
        })
        .collect();

    let mut found: Vec<(ElementKind, Rect, Option<usize>)> = (0..boxes.len())
        .map(|b| (kinds[b], box_rects[b], box_parents[b]))
        .collect();
    found.extend(lines.iter().map(|(r, p)| (ElementKind::Text, *r, *p)));
    in_reading_order(found)
}

fn indices_of(shapes: &[Shape], wanted: Shape) -> Vec<usize> {
    (0..shapes.len()).filter(|&i| shapes[i] == wanted).collect()
}

fn shape_of(c: &Component, limits: Limits) -> Shape {
    let r = c.ink_rect;
    if c.ink_pixels < MIN_INK_PIXELS || r.w.max(r.h) < 6 {
        Shape::Speck
    } else if is_box(c) {
        Shape::Box
    } else if r.h <= limits.text_height {
        Shape::Stroke
    } else {
        Shape::Blob
    }
}

/// Whether the component's strokes outline its bounding box.
fn is_box(c: &Component) -> bool {
    let r = c.ink_rect;
    if r.w.min(r.h) < MIN_BOX_SIDE {
        return false;
    }
    let perimeter = 2.0 * f64::from(r.w + r.h);
    if f64::from(c.ink_pixels) / perimeter > MAX_STROKE {
        return false;
    }
    let band = side_band(r);
    let inner = inner_rect(r);
    if inner.w < 4 || inner.h < 4 {
        return false;
    }
    let sides = side_coverage(c, r, band);
    if sides.iter().any(|&s| s < SIDE_COVERAGE) {
        return false;
    }
    let covered: u64 = c
        .runs
        .iter()
        .filter(|run| run.y >= inner.y && run.y < inner.bottom())
        .map(|run| {
            u64::from(
                run.x1
                    .min(inner.right())
                    .saturating_sub(run.x0.max(inner.x)),
            )
        })
        .sum();
    let hole = 1.0 - covered as f64 / inner.area() as f64;
    hole >= MIN_HOLE
}

/// Share of each side (top, bottom, left, right) of `r` along which the component has ink
/// within `band` pixels of that side.
fn side_coverage(c: &Component, r: Rect, band: u32) -> [f64; 4] {
    let mut top = vec![false; r.w as usize];
    let mut bottom = vec![false; r.w as usize];
    let mut left = vec![false; r.h as usize];
    let mut right = vec![false; r.h as usize];
    for run in &c.runs {
        if run.y < r.y || run.y >= r.bottom() {
            continue;
        }
        let (x0, x1) = (run.x0.max(r.x), run.x1.min(r.right()));
        if x0 >= x1 {
            continue;
        }
        let cols = (x0 - r.x) as usize..(x1 - r.x) as usize;
        if run.y < r.y + band {
            top[cols.clone()].fill(true);
        }
        if run.y + band >= r.bottom() {
            bottom[cols].fill(true);
        }
        let row = (run.y - r.y) as usize;
        if x0 < r.x + band {
            left[row] = true;
        }
        if x1 + band > r.right() {
            right[row] = true;
        }
    }
    let share = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / v.len().max(1) as f64;
    [share(&top), share(&bottom), share(&left), share(&right)]
}

/// Whether both diagonals of `r` are inked, inside the side bands, by component `own` or one
/// of the `loose` blobs inside it. Only ink away from the outline counts, so the outline itself
/// (close to the diagonals near the corners of a flat box) never makes a cross.
fn is_crossed(labels: &Labels, own: u32, loose: &[u32], r: Rect) -> bool {
    const SAMPLES: u32 = 48;
    let inner = inner_rect(r);
    if inner.w < 4 || inner.h < 4 {
        return false;
    }
    let counts = |x: u32, y: u32| {
        labels
            .at(i64::from(x), i64::from(y))
            .is_some_and(|l| l == own || loose.contains(&l))
    };
    // Walk along the longer side; look across the shorter one.
    let wide = r.w >= r.h;
    let (long0, long_len, short0, short_len) = if wide {
        (r.x, r.w, r.y, r.h)
    } else {
        (r.y, r.h, r.x, r.w)
    };
    let (inner_long, inner_short) = if wide {
        ((inner.x, inner.right()), (inner.y, inner.bottom()))
    } else {
        ((inner.y, inner.bottom()), (inner.x, inner.right()))
    };
    let diagonal = |flip: bool| {
        let (mut considered, mut hits) = (0u32, 0u32);
        for i in 0..SAMPLES {
            let long = inner_long.0 + (inner_long.1 - inner_long.0 - 1) * i / (SAMPLES - 1);
            let t = f64::from(long - long0) / f64::from(long_len);
            let along = if flip { 1.0 - t } else { t };
            let expected = f64::from(short0) + along * f64::from(short_len);
            if expected < f64::from(inner_short.0) || expected >= f64::from(inner_short.1) {
                continue;
            }
            considered += 1;
            // Hand-drawn crosses wobble, and often start a little inside the corners, which
            // moves the line furthest from the box diagonal near its ends.
            let tol = 4.0 + 0.06 * f64::from(short_len) + 12.0 * (1.0 - 2.0 * t).abs();
            let lo = (expected - tol).max(f64::from(inner_short.0)) as u32;
            let hi = ((expected + tol) as u32).min(inner_short.1 - 1);
            let hit = (lo..=hi).any(|s| {
                if wide {
                    counts(long, s)
                } else {
                    counts(s, long)
                }
            });
            hits += u32::from(hit);
        }
        considered >= SAMPLES / 3 && f64::from(hits) >= DIAGONAL_COVERAGE * f64::from(considered)
    };
    diagonal(false) && diagonal(true)
}

/// The part of a box inside the bands along its sides.
fn inner_rect(r: Rect) -> Rect {
    let band = side_band(r);
    Rect::from_edges(
        r.x + band,
        r.y + band,
        r.right().saturating_sub(band),
        r.bottom().saturating_sub(band),
    )
}

/// How far from each side of a box its outline strokes may lie: wide enough for wobble of a
/// few pixels plus the dilation, and for a slight tilt on large boxes; capped so that it never
/// reaches the middle of small ones.
fn side_band(r: Rect) -> u32 {
    (r.w.min(r.h) * 3 / 20).clamp(6, 24) + GAP_RADIUS
}

/// Index (into `boxes`) of the smallest box containing `rect`, skipping the box `own`.
fn smallest_container(boxes: &[Rect], rect: &Rect, own: Option<usize>) -> Option<usize> {
    (0..boxes.len())
        .filter(|&b| Some(b) != own)
        .filter(|&b| boxes[b].area() > rect.area() && boxes[b].contains(rect, CONTAIN_SLACK))
        .min_by_key(|&b| (boxes[b].area(), b))
}

/// Joins strokes under the same parent that sit on one line and are at most a word gap apart;
/// keeps the joined lines that are wider than tall.
///
/// `tallest` bounds the height of any stroke, and so the widest word gap: scanning left to
/// right, nothing further than that from a stroke can join it, which keeps a noisy photo with
/// thousands of strokes from costing a comparison of every pair.
fn merge_text_lines(strokes: &[(Rect, Option<usize>)], tallest: u32) -> Vec<(Rect, Option<usize>)> {
    let mut order: Vec<usize> = (0..strokes.len()).collect();
    order.sort_by_key(|&i| (strokes[i].1, strokes[i].0.x, strokes[i].0.y));
    let mut group: Vec<usize> = (0..strokes.len()).collect();
    for (k, &i) in order.iter().enumerate() {
        for &j in &order[k + 1..] {
            let ((a, pa), (b, pb)) = (strokes[i], strokes[j]);
            if pa != pb || b.x > a.right() + tallest.max(10) {
                break;
            }
            if same_line(&a, &b) {
                let (gi, gj) = (root(&mut group, i), root(&mut group, j));
                group[gi.max(gj)] = gi.min(gj);
            }
        }
    }
    let mut lines: Vec<(Rect, Option<usize>)> = Vec::new();
    let mut line_of_root = vec![usize::MAX; strokes.len()];
    for &i in &order {
        let g = root(&mut group, i);
        if line_of_root[g] == usize::MAX {
            line_of_root[g] = lines.len();
            lines.push(strokes[i]);
        } else {
            let line = &mut lines[line_of_root[g]];
            line.0 = line.0.union(&strokes[i].0);
        }
    }
    lines.retain(|(r, _)| f64::from(r.w) >= 1.2 * f64::from(r.h));
    lines
}

fn root(group: &mut [usize], mut i: usize) -> usize {
    while group[i] != i {
        group[i] = group[group[i]];
        i = group[i];
    }
    i
}

/// Same baseline and at most about a letter height apart.
fn same_line(a: &Rect, b: &Rect) -> bool {
    if a.vertical_overlap(b) < 0.5 {
        return false;
    }
    let gap =
        b.x.saturating_sub(a.right())
            .max(a.x.saturating_sub(b.right()));
    gap <= a.h.max(b.h).max(10)
}

fn box_kind(
    r: Rect,
    crossed: bool,
    box_children: usize,
    text_children: usize,
    limits: Limits,
) -> ElementKind {
    if crossed {
        ElementKind::Image
    } else if box_children > 0 || text_children > 1 || r.h > limits.control_height {
        ElementKind::Container
    } else if f64::from(r.w) >= INPUT_ASPECT * f64::from(r.h) {
        ElementKind::Input
    } else {
        ElementKind::Button
    }
}

/// Sorts elements top to bottom, then left to right, and renumbers the parent links (given as
/// indices into the boxes, which come first in `found`).
fn in_reading_order(found: Vec<(ElementKind, Rect, Option<usize>)>) -> Vec<Element> {
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by_key(|&i| {
        let (kind, r, _) = found[i];
        (r.y, r.x, r.w, r.h, kind)
    });
    let mut new_index = vec![0; found.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    order
        .iter()
        .map(|&old| {
            let (kind, rect, parent) = found[old];
            Element {
                kind,
                rect,
                parent: parent.map(|p| new_index[p]),
            }
        })
        .collect()
}
