//! The job types this build knows, by name.

use std::sync::Arc;

use crate::sketch::SketchToApp;
use crate::thumbnail::ImageThumbnail;
use crate::JobType;

/// Job types by name. Cheap to clone (the types are shared).
#[derive(Debug, Clone)]
pub struct Registry {
    /// Sorted by name, names unique.
    types: Vec<Arc<dyn JobType>>,
}

impl Registry {
    /// Every job type of this crate.
    pub fn builtin() -> Self {
        Registry::new(vec![Arc::new(SketchToApp), Arc::new(ImageThumbnail)])
    }

    /// A registry of `types`; on a duplicate name the first one wins.
    pub fn new(types: Vec<Arc<dyn JobType>>) -> Self {
        let mut unique: Vec<Arc<dyn JobType>> = Vec::with_capacity(types.len());
        for t in types {
            if !unique.iter().any(|u| u.name() == t.name()) {
                unique.push(t);
            }
        }
        unique.sort_by_key(|t| t.name());
        Registry { types: unique }
    }

    /// The job type called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn JobType>> {
        self.types.iter().find(|t| t.name() == name).cloned()
    }

    /// All names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|t| t.name()).collect()
    }

    /// All job types, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn JobType>> {
        self.types.iter()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

/// Every job type of this crate: [`Registry::builtin`].
pub fn registry() -> Registry {
    Registry::builtin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_types_are_found_by_name() {
        let r = registry();
        assert_eq!(r.names(), ["image_thumbnail", "sketch_to_app"]);
        assert_eq!(
            r.get("sketch_to_app").map(|t| t.name()),
            Some("sketch_to_app")
        );
        assert!(r.get("nope").is_none());
    }

    #[test]
    fn duplicates_keep_the_first() {
        let r = Registry::new(vec![Arc::new(SketchToApp), Arc::new(SketchToApp)]);
        assert_eq!(r.names(), ["sketch_to_app"]);
    }
}
