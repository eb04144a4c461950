//! `sketch_to_app` on the hand-composed sketches in `tests/fixtures/` (drawn once by
//! `examples/draw_fixtures.rs`): exact element counts and the expected structure.

mod common;

use cognomega_pipelines::sketch::{Counts, ElementKind, LayoutDocument, NodeKind};
use common::{layout, run_sketch};

fn detect(name: &str) -> LayoutDocument {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    layout(&run_sketch(&input).expect("runs"))
}

/// Kinds of the elements directly inside the element at `index`.
fn children_of(doc: &LayoutDocument, index: usize) -> Vec<ElementKind> {
    doc.elements()
        .iter()
        .filter(|(_, _, p)| *p == Some(index))
        .map(|(k, _, _)| *k)
        .collect()
}

#[test]
fn login_form_png() {
    let doc = detect("login_form.png");
    assert_eq!(
        doc.counts,
        Counts {
            container: 1,
            button: 1,
            input: 2,
            image: 0,
            text: 5
        }
    );
    // Everything sits in the card, top to bottom: title, label, input, label, input, button,
    // link.
    assert_eq!(doc.root.children.len(), 1);
    let card = &doc.root.children[0];
    assert_eq!(card.kind, NodeKind::Container);
    let order: Vec<NodeKind> = card.children.iter().map(|n| n.kind).collect();
    use NodeKind::*;
    assert_eq!(order, [Text, Text, Input, Text, Input, Button, Text]);
    assert_eq!(card.children[5].children.len(), 1, "the button's label");
}

#[test]
fn dashboard_photo_jpeg() {
    let doc = detect("dashboard_photo.jpg");
    assert_eq!(
        doc.counts,
        Counts {
            container: 4,
            button: 5,
            input: 1,
            image: 3,
            text: 15
        }
    );
    // Header row: logo, title, three nav buttons, left to right.
    let header = &doc.root.children[0];
    assert_eq!(header.kind, NodeKind::Row);
    let kinds: Vec<NodeKind> = header.children.iter().map(|n| n.kind).collect();
    use NodeKind::*;
    assert_eq!(kinds, [Image, Text, Button, Button, Button]);
    // Sidebar and main area side by side; the main area holds two cards and a search row.
    let body = &doc.root.children[1];
    assert_eq!(body.kind, Row);
    assert_eq!(body.children.len(), 2);
    let main = &body.children[1];
    assert_eq!(main.kind, Container);
    let cards = &main.children[0];
    assert_eq!(cards.kind, Row);
    for card in &cards.children {
        let inside: Vec<NodeKind> = card.children.iter().map(|n| n.kind).collect();
        assert_eq!(inside, [Image, Text, Text]);
    }
    let search: Vec<NodeKind> = main.children[1].children.iter().map(|n| n.kind).collect();
    assert_eq!(search, [Input, Button]);
    assert_eq!(doc.root.children[2].kind, Text, "the footer");
    // Nesting seen through the flat element list: the sidebar holds 4 links and a button.
    let sidebar = doc
        .elements()
        .iter()
        .position(|(k, r, p)| *k == ElementKind::Container && p.is_none() && r.x < 100);
    let sidebar = sidebar.expect("sidebar");
    let mut inside = children_of(&doc, sidebar);
    inside.sort();
    use ElementKind as E;
    assert_eq!(inside, [E::Button, E::Text, E::Text, E::Text, E::Text]);
}

#[test]
fn signup_mobile_png() {
    let doc = detect("signup_mobile.png");
    assert_eq!(
        doc.counts,
        Counts {
            container: 1,
            button: 5,
            input: 3,
            image: 1,
            text: 4
        }
    );
    use NodeKind::*;
    let order: Vec<NodeKind> = doc.root.children.iter().map(|n| n.kind).collect();
    assert_eq!(
        order,
        [Image, Text, Input, Input, Input, Row, Text, Container]
    );
    let bar = &doc.root.children[7];
    let buttons: Vec<NodeKind> = bar.children[0].children.iter().map(|n| n.kind).collect();
    assert_eq!(buttons, [Button, Button, Button]);
}
