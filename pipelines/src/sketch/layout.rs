//! Stage `layout`: the containment tree, with children arranged into rows and columns; and the
//! `layout.json` document that describes it.
//!
//! Schema (version 1):
//!
//! ```json
//! {
//!   "version": 1,
//!   "image": { "width": 1600, "height": 1200 },
//!   "counts": { "container": 2, "button": 3, "input": 2, "image": 1, "text": 4 },
//!   "root": { "kind": "page", "box": { "x": 0, "y": 0, "w": 1600, "h": 1200 }, "children": [ … ] }
//! }
//! ```
//!
//! Every node has `kind`, `box` (input-image pixels) and `children`. Kinds: `page` (the root),
//! `row` (children side by side, left to right), `column` (children stacked inside a row),
//! and the detected elements `container`, `button`, `input`, `image`, `text`. The children of
//! `page`, `container` and `column` are stacked top to bottom.

use serde::{Deserialize, Serialize};

use super::detect::Element;
use super::geometry::Rect;
use super::ElementKind;

/// Version of the `layout.json` schema.
pub const LAYOUT_VERSION: u32 = 1;

/// What a layout node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// The whole sketch; the root.
    Page,
    /// Children side by side.
    Row,
    /// Children stacked, inside a row.
    Column,
    /// A box holding other elements.
    Container,
    /// A small box, possibly with a label.
    Button,
    /// A long thin box.
    Input,
    /// A crossed box: an image placeholder.
    Image,
    /// A line of text.
    Text,
}

impl From<ElementKind> for NodeKind {
    fn from(kind: ElementKind) -> Self {
        match kind {
            ElementKind::Container => NodeKind::Container,
            ElementKind::Button => NodeKind::Button,
            ElementKind::Input => NodeKind::Input,
            ElementKind::Image => NodeKind::Image,
            ElementKind::Text => NodeKind::Text,
        }
    }
}

impl NodeKind {
    /// The detected element this node is, if it is one (not `page`, `row` or `column`).
    pub fn element(self) -> Option<ElementKind> {
        match self {
            NodeKind::Page | NodeKind::Row | NodeKind::Column => None,
            NodeKind::Container => Some(ElementKind::Container),
            NodeKind::Button => Some(ElementKind::Button),
            NodeKind::Input => Some(ElementKind::Input),
            NodeKind::Image => Some(ElementKind::Image),
            NodeKind::Text => Some(ElementKind::Text),
        }
    }
}

/// One node of the layout tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Where it is, in input-image pixels.
    #[serde(rename = "box")]
    pub rect: Rect,
    /// Its children, in layout order.
    pub children: Vec<Node>,
}

/// Size of the input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Number of detected elements of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Containers.
    pub container: u32,
    /// Buttons.
    pub button: u32,
    /// Inputs.
    pub input: u32,
    /// Image placeholders.
    pub image: u32,
    /// Text lines.
    pub text: u32,
}

impl Counts {
    /// The count for `kind`.
    pub fn of(&self, kind: ElementKind) -> u32 {
        match kind {
            ElementKind::Container => self.container,
            ElementKind::Button => self.button,
            ElementKind::Input => self.input,
            ElementKind::Image => self.image,
            ElementKind::Text => self.text,
        }
    }

    fn add(&mut self, kind: ElementKind) {
        let slot = match kind {
            ElementKind::Container => &mut self.container,
            ElementKind::Button => &mut self.button,
            ElementKind::Input => &mut self.input,
            ElementKind::Image => &mut self.image,
            ElementKind::Text => &mut self.text,
        };
        *slot += 1;
    }
}

/// The content of `layout.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutDocument {
    /// Schema version: [`LAYOUT_VERSION`].
    pub version: u32,
    /// Size of the input image; every box is in its pixels.
    pub image: ImageSize,
    /// Detected elements by kind.
    pub counts: Counts,
    /// The page.
    pub root: Node,
}

impl LayoutDocument {
    /// Every element (not `page`, `row`, `column`) in depth-first order, each with the index of
    /// its enclosing element in the same list: the tree without its layout grouping.
    pub fn elements(&self) -> Vec<(ElementKind, Rect, Option<usize>)> {
        let mut out = Vec::new();
        collect_elements(&self.root, None, &mut out);
        out
    }
}

fn collect_elements(
    node: &Node,
    parent: Option<usize>,
    out: &mut Vec<(ElementKind, Rect, Option<usize>)>,
) {
    let mut enclosing = parent;
    if let Some(kind) = node.kind.element() {
        out.push((kind, node.rect, parent));
        enclosing = Some(out.len() - 1);
    }
    for child in &node.children {
        collect_elements(child, enclosing, out);
    }
}

/// Builds the document from elements in working pixels; `scale` converts them to input pixels.
pub(crate) fn build(elements: &[Element], scale: (f64, f64), size: (u32, u32)) -> LayoutDocument {
    let (width, height) = size;
    let rects: Vec<Rect> = elements
        .iter()
        .map(|e| e.rect.scaled(scale.0, scale.1, width, height))
        .collect();
    let mut counts = Counts::default();
    for e in elements {
        counts.add(e.kind);
    }
    let top: Vec<usize> = (0..elements.len())
        .filter(|&i| elements[i].parent.is_none())
        .collect();
    let root = Node {
        kind: NodeKind::Page,
        rect: Rect {
            x: 0,
            y: 0,
            w: width,
            h: height,
        },
        children: arrange(top.iter().map(|&i| subtree(elements, &rects, i)).collect()),
    };
    LayoutDocument {
        version: LAYOUT_VERSION,
        image: ImageSize { width, height },
        counts,
        root,
    }
}

fn subtree(elements: &[Element], rects: &[Rect], i: usize) -> Node {
    let children = (0..elements.len())
        .filter(|&c| elements[c].parent == Some(i))
        .map(|c| subtree(elements, rects, c))
        .collect();
    Node {
        kind: elements[i].kind.into(),
        rect: rects[i],
        children: arrange(children),
    }
}

/// Orders siblings for a top-to-bottom flow: those that overlap vertically form a row (left to
/// right); inside a row, those stacked above each other form a column. A row of one item is
/// just that item.
fn arrange(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.sort_by_key(|n| (n.rect.y, n.rect.x));
    let mut rows: Vec<(Rect, Vec<Node>)> = Vec::new();
    for node in nodes {
        match rows
            .iter_mut()
            .find(|(span, _)| span.vertical_overlap(&node.rect) >= 0.5)
        {
            Some((span, items)) => {
                *span = span.union(&node.rect);
                items.push(node);
            }
            None => rows.push((node.rect, vec![node])),
        }
    }
    rows.sort_by_key(|(span, _)| (span.y, span.x));
    let mut out = Vec::new();
    for (span, items) in rows {
        let mut stacks = stack(items);
        if stacks.len() == 1 {
            // Nothing side by side after all (a tall item pulled stacked ones together, then
            // turned out to overlap them): keep the plain top-to-bottom order.
            out.extend(stacks.remove(0));
            continue;
        }
        let children = stacks.into_iter().map(column).collect();
        out.push(Node {
            kind: NodeKind::Row,
            rect: span,
            children,
        });
    }
    out
}

/// Splits a row's items into stacks that share columns (overlap horizontally), left to right,
/// each top to bottom.
fn stack(items: Vec<Node>) -> Vec<Vec<Node>> {
    let mut stacks: Vec<(Rect, Vec<Node>)> = Vec::new();
    for item in items {
        let overlapping = stacks
            .iter_mut()
            .find(|(span, _)| horizontal_overlap(span, &item.rect));
        match overlapping {
            Some((span, members)) => {
                *span = span.union(&item.rect);
                members.push(item);
            }
            None => stacks.push((item.rect, vec![item])),
        }
    }
    stacks.sort_by_key(|(span, _)| (span.x, span.y));
    stacks
        .into_iter()
        .map(|(_, mut members)| {
            members.sort_by_key(|n| (n.rect.y, n.rect.x));
            members
        })
        .collect()
}

fn horizontal_overlap(a: &Rect, b: &Rect) -> bool {
    let overlap = a.right().min(b.right()).saturating_sub(a.x.max(b.x));
    overlap * 2 >= a.w.min(b.w).max(1)
}

fn column(mut members: Vec<Node>) -> Node {
    if members.len() == 1 {
        return members.remove(0);
    }
    let rect = members
        .iter()
        .skip(1)
        .fold(members[0].rect, |acc, n| acc.union(&n.rect));
    Node {
        kind: NodeKind::Column,
        rect,
        children: members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(
        kind: ElementKind,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        parent: Option<usize>,
    ) -> Element {
        Element {
            kind,
            rect: Rect { x, y, w, h },
            parent,
        }
    }

    #[test]
    fn side_by_side_items_form_a_row_and_stacked_ones_a_column() {
        let elements = vec![
            element(ElementKind::Text, 10, 10, 200, 20, None),
            element(ElementKind::Image, 10, 60, 100, 100, None),
            element(ElementKind::Text, 150, 60, 100, 20, None),
            element(ElementKind::Button, 150, 110, 80, 40, None),
            element(ElementKind::Input, 10, 200, 300, 40, None),
        ];
        let doc = build(&elements, (1.0, 1.0), (400, 300));
        let kinds: Vec<NodeKind> = doc.root.children.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, [NodeKind::Text, NodeKind::Row, NodeKind::Input]);
        let row = &doc.root.children[1];
        assert_eq!(row.children[0].kind, NodeKind::Image);
        assert_eq!(row.children[1].kind, NodeKind::Column);
        let column: Vec<NodeKind> = row.children[1].children.iter().map(|n| n.kind).collect();
        assert_eq!(column, [NodeKind::Text, NodeKind::Button]);
        assert_eq!(doc.counts.text, 2);
    }

    #[test]
    fn elements_round_trip_through_the_tree() {
        let elements = vec![
            element(ElementKind::Container, 0, 0, 300, 200, None),
            element(ElementKind::Button, 20, 20, 80, 40, Some(0)),
            element(ElementKind::Button, 120, 20, 80, 40, Some(0)),
        ];
        let doc = build(&elements, (2.0, 2.0), (600, 400));
        let flat = doc.elements();
        assert_eq!(flat.len(), 3);
        assert_eq!(
            flat[0],
            (
                ElementKind::Container,
                Rect {
                    x: 0,
                    y: 0,
                    w: 600,
                    h: 400
                },
                None
            )
        );
        assert_eq!(
            flat[2],
            (
                ElementKind::Button,
                Rect {
                    x: 240,
                    y: 40,
                    w: 160,
                    h: 80
                },
                Some(0)
            )
        );
    }
}
