//! `index.html`: the layout as a responsive HTML5 scaffold.

use crate::sketch::geometry::Rect;
use crate::sketch::layout::{LayoutDocument, Node, NodeKind};
use crate::sketch::params::SketchParams;

/// Placeholder words for text lines: the sketch's scribbles carry no readable text.
const LOREM: [&str; 12] = [
    "Lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet,",
    "consectetur",
    "adipiscing",
    "elit,",
    "sed",
    "do",
    "eiusmod",
    "tempor",
];

/// The whole page.
pub(super) fn page(doc: &LayoutDocument, params: &SketchParams) -> String {
    let mut html = Html {
        out: String::new(),
        numbers: Numbers::default(),
    };
    let title = escape(&params.title);
    for line in [
        "<!DOCTYPE html>",
        "<html lang=\"en\">",
        "<head>",
        "  <meta charset=\"utf-8\">",
        "  <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        &format!("  <title>{title}</title>"),
        "  <link rel=\"stylesheet\" href=\"styles.css\">",
        "</head>",
        &format!("<body class=\"theme-{}\">", params.theme.as_str()),
        "  <main class=\"page\">",
        &format!("    <h1 class=\"visually-hidden\">{title}</h1>"),
    ] {
        html.line(0, line);
    }
    for child in &doc.root.children {
        let siblings = &doc.root.children;
        html.node(child, &doc.root.rect, Flow::Stacked { siblings }, 2);
    }
    for line in ["  </main>", "</body>", "</html>"] {
        html.line(0, line);
    }
    html.out
}

/// How the parent places a child: stacked children keep their side (left, centre, right),
/// judged against their `siblings`; children side by side keep the space before them (from
/// `after`, the previous item's right edge or the row's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow<'a> {
    Stacked { siblings: &'a [Node] },
    SideBySide { after: u32 },
}

/// Running numbers per kind, for ids and labels.
#[derive(Debug, Default)]
struct Numbers {
    container: u32,
    button: u32,
    input: u32,
    image: u32,
    text: u32,
}

#[derive(Debug)]
struct Html {
    out: String,
    numbers: Numbers,
}

impl Html {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    /// Writes `node`; `reference` is the box its width is a share of.
    fn node(&mut self, node: &Node, reference: &Rect, flow: Flow<'_>, depth: usize) {
        let attrs = placement(node, reference, flow);
        match node.kind {
            NodeKind::Page => {}
            NodeKind::Row => {
                // A row spans its parent: its children's widths are shares of the same box.
                let class = if top_aligned(&node.children) {
                    "row top"
                } else {
                    "row"
                };
                self.line(depth, &format!("<div class=\"{class}\">"));
                let mut after = reference.x;
                for child in &node.children {
                    self.node(child, reference, Flow::SideBySide { after }, depth + 1);
                    after = child.rect.right();
                }
                self.line(depth, "</div>");
            }
            NodeKind::Column => {
                self.line(depth, &format!("<div class=\"column{attrs}>"));
                self.children(node, depth);
                self.line(depth, "</div>");
            }
            NodeKind::Container => {
                self.numbers.container += 1;
                let n = self.numbers.container;
                self.line(
                    depth,
                    &format!("<section id=\"container-{n}\" class=\"container{attrs}>"),
                );
                self.children(node, depth);
                self.line(depth, "</section>");
            }
            NodeKind::Button => {
                self.numbers.button += 1;
                let n = self.numbers.button;
                self.line(
                    depth,
                    &format!("<button type=\"button\" id=\"button-{n}\" class=\"button{attrs}>Button {n}</button>"),
                );
            }
            NodeKind::Input => {
                self.numbers.input += 1;
                let n = self.numbers.input;
                self.line(
                    depth,
                    &format!(
                        "<input type=\"text\" id=\"input-{n}\" class=\"input{attrs} \
                         placeholder=\"Input {n}\" aria-label=\"Input {n}\">"
                    ),
                );
            }
            NodeKind::Image => {
                self.numbers.image += 1;
                let n = self.numbers.image;
                let ratio = format!("--ratio: {} / {}", node.rect.w.max(1), node.rect.h.max(1));
                let attrs = attrs.replace("style=\"", &format!("style=\"{ratio}; "));
                self.line(
                    depth,
                    &format!(
                        "<div id=\"image-{n}\" class=\"image{attrs} role=\"img\" \
                         aria-label=\"Image placeholder {n}\"></div>"
                    ),
                );
            }
            NodeKind::Text => {
                self.numbers.text += 1;
                let n = self.numbers.text;
                let words = lorem(node.rect);
                self.line(
                    depth,
                    &format!("<p id=\"text-{n}\" class=\"text{attrs}>{words}</p>"),
                );
            }
        }
    }

    fn children(&mut self, node: &Node, depth: usize) {
        for child in &node.children {
            let siblings = &node.children;
            self.node(child, &node.rect, Flow::Stacked { siblings }, depth + 1);
        }
    }
}

/// The rest of the class attribute (alignment) and the style attribute with the width share
/// and, side by side, the space before: `" align-center" style="--w: 40.0%"`. Starts inside
/// the class attribute's quotes.
fn placement(node: &Node, reference: &Rect, flow: Flow<'_>) -> String {
    let percent = |px: u32| (100.0 * f64::from(px) / f64::from(reference.w.max(1))).min(100.0);
    let width = percent(node.rect.w);
    match flow {
        Flow::Stacked { siblings } => {
            let align = alignment(&node.rect, reference, siblings);
            format!("{align}\" style=\"--w: {width:.1}%\"")
        }
        Flow::SideBySide { after } => {
            let offset = percent(node.rect.x.saturating_sub(after));
            format!("\" style=\"--w: {width:.1}%; --offset: {offset:.1}%\"")
        }
    }
}

/// Whether the items of a row line up by their tops (within a few pixels, or better than by
/// their middles). Ties go to the top: rendered content rarely keeps the sketch's heights.
fn top_aligned(items: &[Node]) -> bool {
    let spread = |values: Vec<u32>| {
        let (lo, hi) = (values.iter().min(), values.iter().max());
        hi.zip(lo).map_or(0, |(hi, lo)| hi - lo)
    };
    let tops = spread(items.iter().map(|n| 2 * n.rect.y).collect());
    let middles = spread(items.iter().map(|n| 2 * n.rect.y + n.rect.h).collect());
    // Both spreads are doubled (no halving of odd heights): 16 is 8 px.
    tops <= middles.max(16)
}

/// Stacked items keep their side. An item that starts where a sibling of another width starts
/// is left-aligned with it (a label above an input); one that ends with such a sibling is
/// right-aligned; otherwise it is centred when the margins left and right are about equal.
fn alignment(r: &Rect, parent: &Rect, siblings: &[Node]) -> &'static str {
    const SAME_EDGE: u32 = 8;
    let others = siblings.iter().map(|n| n.rect).filter(|s| s != r);
    let (mut shares_left, mut shares_right) = (false, false);
    for s in others {
        let (left, right) = (
            s.x.abs_diff(r.x) <= SAME_EDGE,
            s.right().abs_diff(r.right()) <= SAME_EDGE,
        );
        shares_left |= left && !right;
        shares_right |= right && !left;
    }
    if shares_left {
        return "";
    }
    if shares_right {
        return " align-end";
    }
    let left = i64::from(r.x) - i64::from(parent.x);
    let right = i64::from(parent.right()) - i64::from(r.right());
    if (left - right).abs() * 25 <= i64::from(parent.w) {
        " align-center"
    } else if right < left {
        " align-end"
    } else {
        ""
    }
}

/// About as many placeholder words as fit the scribble (a word ≈ 3 line heights wide).
fn lorem(r: Rect) -> String {
    let words = (f64::from(r.w) / (3.0 * f64::from(r.h.max(1)))).round() as usize;
    let words = words.clamp(1, LOREM.len());
    let text = LOREM[..words].join(" ");
    text.trim_end_matches(',').to_owned()
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_characters() {
        assert_eq!(
            escape("<a href=\"x\">Tom & Jerry's</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
    }

    #[test]
    fn centred_items_are_recognised() {
        let parent = Rect {
            x: 0,
            y: 0,
            w: 1200,
            h: 800,
        };
        assert_eq!(
            alignment(
                &Rect {
                    x: 400,
                    y: 0,
                    w: 400,
                    h: 50
                },
                &parent,
                &[]
            ),
            " align-center"
        );
        assert_eq!(
            alignment(
                &Rect {
                    x: 700,
                    y: 0,
                    w: 400,
                    h: 50
                },
                &parent,
                &[]
            ),
            " align-end"
        );
        assert_eq!(
            alignment(
                &Rect {
                    x: 50,
                    y: 0,
                    w: 400,
                    h: 50
                },
                &parent,
                &[]
            ),
            ""
        );
    }

    fn node(kind: NodeKind, x: u32, y: u32, w: u32, h: u32) -> Node {
        Node {
            kind,
            rect: Rect { x, y, w, h },
            children: Vec::new(),
        }
    }

    #[test]
    fn row_items_carry_their_width_and_the_space_before_them() {
        let parent = Rect {
            x: 0,
            y: 0,
            w: 1000,
            h: 500,
        };
        let item = node(NodeKind::Button, 700, 10, 100, 40);
        assert_eq!(
            placement(&item, &parent, Flow::SideBySide { after: 500 }),
            "\" style=\"--w: 10.0%; --offset: 20.0%\""
        );
    }

    #[test]
    fn an_item_starting_with_a_narrower_sibling_is_left_aligned() {
        let card = Rect {
            x: 200,
            y: 0,
            w: 400,
            h: 400,
        };
        let label = node(NodeKind::Text, 240, 10, 80, 12);
        let input = node(NodeKind::Input, 241, 40, 320, 44);
        let siblings = [label, input.clone()];
        // Centred by its margins (40 and 39), but it starts where the label starts.
        assert_eq!(alignment(&input.rect, &card, &[]), " align-center");
        assert_eq!(alignment(&input.rect, &card, &siblings), "");
        let right = node(NodeKind::Button, 480, 100, 80, 40);
        assert_eq!(
            alignment(&right.rect, &card, &[input, right.clone()]),
            " align-end"
        );
    }

    #[test]
    fn rows_align_by_tops_when_the_tops_line_up() {
        let tall = node(NodeKind::Container, 0, 100, 200, 400);
        let short = node(NodeKind::Container, 300, 102, 200, 150);
        assert!(top_aligned(&[tall.clone(), short]));
        let centred = node(NodeKind::Button, 300, 280, 100, 40);
        assert!(!top_aligned(&[tall, centred]));
    }

    #[test]
    fn placeholder_text_grows_with_the_line() {
        assert_eq!(
            lorem(Rect {
                x: 0,
                y: 0,
                w: 20,
                h: 20
            }),
            "Lorem"
        );
        assert_eq!(
            lorem(Rect {
                x: 0,
                y: 0,
                w: 300,
                h: 20
            }),
            "Lorem ipsum dolor sit amet"
        );
    }
}
