//! The parameters of `sketch_to_app`, parsed from JSON.

use serde_json::{Map, Value};

/// Longest accepted title, in characters.
pub const MAX_TITLE_CHARS: usize = 100;
/// Title used when none is given.
pub const DEFAULT_TITLE: &str = "Sketch app";

/// Colour scheme of the generated app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Theme {
    /// Dark text on light surfaces (the default).
    #[default]
    Light,
    /// Light text on dark surfaces.
    Dark,
}

impl Theme {
    /// The name used in params and in the generated CSS class.
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
    }
}

/// Parsed, valid parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchParams {
    /// Page title of the generated app (1..=100 characters, no control characters).
    pub title: String,
    /// Colour scheme.
    pub theme: Theme,
}

impl Default for SketchParams {
    fn default() -> Self {
        SketchParams {
            title: DEFAULT_TITLE.to_owned(),
            theme: Theme::Light,
        }
    }
}

impl SketchParams {
    /// Parses `{}` or `{"title": "…", "theme": "light"|"dark"}`; `null` counts as `{}`.
    /// Unknown keys and wrong types are refused with a message naming the key.
    pub fn parse(params: &Value) -> Result<Self, String> {
        let empty = Map::new();
        let object = match params {
            Value::Null => &empty,
            Value::Object(o) => o,
            other => {
                return Err(format!(
                    "params must be a JSON object, not {}",
                    type_name(other)
                ))
            }
        };
        let mut parsed = SketchParams::default();
        for (key, value) in object {
            match key.as_str() {
                "title" => parsed.title = parse_title(value)?,
                "theme" => parsed.theme = parse_theme(value)?,
                other => {
                    return Err(format!(
                        "unknown param `{other}`; sketch_to_app accepts `title` and `theme`"
                    ))
                }
            }
        }
        Ok(parsed)
    }

    /// The normalized JSON form (every key present), which `run` receives.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "title": self.title, "theme": self.theme.as_str() })
    }
}

fn parse_title(value: &Value) -> Result<String, String> {
    let Value::String(title) = value else {
        return Err(format!(
            "`title` must be a string, not {}",
            type_name(value)
        ));
    };
    let chars = title.chars().count();
    if chars == 0 || chars > MAX_TITLE_CHARS {
        return Err(format!(
            "`title` must be 1 to {MAX_TITLE_CHARS} characters long; it is {chars}"
        ));
    }
    if title.chars().any(char::is_control) {
        return Err("`title` must not contain control characters".to_owned());
    }
    Ok(title.clone())
}

fn parse_theme(value: &Value) -> Result<Theme, String> {
    match value.as_str() {
        Some("light") => Ok(Theme::Light),
        Some("dark") => Ok(Theme::Dark),
        Some(other) => Err(format!(
            "`theme` must be \"light\" or \"dark\", not \"{other}\""
        )),
        None => Err(format!(
            "`theme` must be a string, not {}",
            type_name(value)
        )),
    }
}

/// The JSON type of `value`, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_params_get_defaults() {
        let p = SketchParams::parse(&json!({})).expect("valid");
        assert_eq!(p, SketchParams::default());
        assert_eq!(
            p.to_value(),
            json!({"title": "Sketch app", "theme": "light"})
        );
        assert_eq!(
            SketchParams::parse(&Value::Null),
            Ok(SketchParams::default())
        );
    }

    #[test]
    fn known_params_are_parsed() {
        let p = SketchParams::parse(&json!({"title": "Login", "theme": "dark"})).expect("valid");
        assert_eq!(p.title, "Login");
        assert_eq!(p.theme, Theme::Dark);
    }

    #[test]
    fn bad_params_are_refused_with_a_precise_message() {
        let err = |v: Value| SketchParams::parse(&v).expect_err("invalid");
        assert!(err(json!({"colour": "red"})).contains("unknown param `colour`"));
        assert!(err(json!({"title": 5})).contains("`title` must be a string, not a number"));
        assert!(err(json!({"title": "x".repeat(101)})).contains("1 to 100 characters"));
        assert!(err(json!({"title": ""})).contains("it is 0"));
        assert!(err(json!({"title": "a\nb"})).contains("control characters"));
        assert!(err(json!({"theme": "blue"})).contains("\"light\" or \"dark\""));
        assert!(err(json!({"theme": true})).contains("not a boolean"));
        assert!(err(json!([1])).contains("JSON object"));
    }

    #[test]
    fn a_title_of_100_multibyte_characters_is_accepted() {
        let title = "é".repeat(100);
        assert_eq!(
            SketchParams::parse(&json!({ "title": title })).map(|p| p.title),
            Ok(title)
        );
    }
}
