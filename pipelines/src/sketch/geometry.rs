//! Axis-aligned pixel rectangles: detected elements, ground truth and layout boxes.

use serde::{Deserialize, Serialize};

/// A rectangle in pixels: `x`, `y` of the top-left corner, width `w` and height `h`. Covers
/// columns `x..x + w` and rows `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rect {
    /// Left edge (inclusive).
    pub x: u32,
    /// Top edge (inclusive).
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// The rectangle spanning columns `x0..x1` and rows `y0..y1` (exclusive ends).
    pub fn from_edges(x0: u32, y0: u32, x1: u32, y1: u32) -> Self {
        Rect {
            x: x0,
            y: y0,
            w: x1.saturating_sub(x0),
            h: y1.saturating_sub(y0),
        }
    }

    /// One past the right-most column.
    pub fn right(&self) -> u32 {
        self.x + self.w
    }

    /// One past the bottom row.
    pub fn bottom(&self) -> u32 {
        self.y + self.h
    }

    /// Area in pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }

    /// The smallest rectangle covering both.
    pub fn union(&self, other: &Rect) -> Rect {
        Rect::from_edges(
            self.x.min(other.x),
            self.y.min(other.y),
            self.right().max(other.right()),
            self.bottom().max(other.bottom()),
        )
    }

    /// Area of the overlap (0 when disjoint).
    pub fn intersection_area(&self, other: &Rect) -> u64 {
        let w = self
            .right()
            .min(other.right())
            .saturating_sub(self.x.max(other.x));
        let h = self
            .bottom()
            .min(other.bottom())
            .saturating_sub(self.y.max(other.y));
        u64::from(w) * u64::from(h)
    }

    /// Intersection over union, in 0..=1.
    pub fn iou(&self, other: &Rect) -> f64 {
        let inter = self.intersection_area(other);
        let union = self.area() + other.area() - inter;
        if union == 0 {
            return 0.0;
        }
        inter as f64 / union as f64
    }

    /// Whether `inner` lies inside `self`, allowing it to stick out by `slack` pixels per side
    /// (hand-drawn strokes wander).
    pub fn contains(&self, inner: &Rect, slack: u32) -> bool {
        inner.x + slack >= self.x
            && inner.y + slack >= self.y
            && inner.right() <= self.right() + slack
            && inner.bottom() <= self.bottom() + slack
    }

    /// How much of the shorter of the two vertical extents the other covers, in 0..=1: the
    /// "same row" test.
    pub fn vertical_overlap(&self, other: &Rect) -> f64 {
        let overlap = self
            .bottom()
            .min(other.bottom())
            .saturating_sub(self.y.max(other.y));
        let shorter = self.h.min(other.h).max(1);
        f64::from(overlap) / f64::from(shorter)
    }

    /// Scales every edge by `fx` horizontally and `fy` vertically (rounding each edge, so
    /// adjacent boxes stay adjacent) and clamps to `width` × `height`.
    pub fn scaled(&self, fx: f64, fy: f64, width: u32, height: u32) -> Rect {
        let edge = |v: u32, f: f64, limit: u32| ((f64::from(v) * f).round() as u32).min(limit);
        Rect::from_edges(
            edge(self.x, fx, width),
            edge(self.y, fy, height),
            edge(self.right(), fx, width),
            edge(self.bottom(), fy, height),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_and_disjoint_rectangles() {
        let a = Rect {
            x: 10,
            y: 10,
            w: 20,
            h: 10,
        };
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(
            a.iou(&Rect {
                x: 40,
                y: 10,
                w: 5,
                h: 5
            }),
            0.0
        );
        let half = Rect {
            x: 20,
            y: 10,
            w: 20,
            h: 10,
        };
        assert!((a.iou(&half) - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn containment_allows_slack() {
        let outer = Rect {
            x: 10,
            y: 10,
            w: 100,
            h: 100,
        };
        assert!(outer.contains(
            &Rect {
                x: 8,
                y: 20,
                w: 10,
                h: 10
            },
            2
        ));
        assert!(!outer.contains(
            &Rect {
                x: 7,
                y: 20,
                w: 10,
                h: 10
            },
            2
        ));
    }

    #[test]
    fn scaling_keeps_edges_inside_the_image() {
        let r = Rect {
            x: 1,
            y: 2,
            w: 99,
            h: 98,
        };
        assert_eq!(
            r.scaled(2.0, 2.0, 150, 150),
            Rect {
                x: 2,
                y: 4,
                w: 148,
                h: 146
            }
        );
    }
}
