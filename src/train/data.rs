//! Training data: image-caption pairs, read the way transformers' `run_clip.py`
//! names them. Three layouts:
//! - JSON Lines (`.jsonl`, `.json`): one object per line;
//! - CSV (`.csv`) with a header row;
//! - a folder of class folders (`DIR/<class>/*.jpg`), captioned by a
//!   template such as `"a photo of a {}"`.
//!
//! In the first two, the image column holds a path (relative paths resolve
//! against the data file's folder) and the caption column a string; other
//! fields are ignored. Every error names the file, the line and the column.
//! Images are not opened here: a row whose image does not decode is the
//! trainer's to report and skip.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why a data set could not be read. Messages start with the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: no image-caption pairs, expected {expected}", path.display())]
    Empty { path: PathBuf, expected: String },
    #[error("{}: unknown data format, expected a .jsonl, .json or .csv file, or a folder of class folders", path.display())]
    Format { path: PathBuf },
    #[error(
        "--caption-template {template:?}: expected a text with `{{}}` where the class name goes"
    )]
    Template { template: String },
    #[error(
        "{}: --caption-template captions class folders; this file has its own captions (drop the template, or give a folder of class folders)",
        path.display()
    )]
    TemplateWithCaptions { path: PathBuf },
}

/// Result alias for this module.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// One training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub image: PathBuf,
    pub caption: String,
}

/// Which columns hold the image path and the caption (`run_clip.py`'s
/// `--image_column` / `--caption_column`).
#[derive(Clone, Debug)]
pub struct Columns {
    pub image: String,
    pub caption: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            image: "image".into(),
            caption: "caption".into(),
        }
    }
}

/// File extensions taken as images in a class folder (case-insensitive).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp"];

/// Reads every pair of the data set at `path`, in file order (class folders
/// and their files in name order). `template` captions class folders and is
/// required for them.
pub fn load(path: &Path, columns: &Columns, template: Option<&str>) -> Result<Vec<Pair>> {
    if path.is_dir() {
        return class_folders(path, template.unwrap_or("{}"));
    }
    if template.is_some() {
        return Err(DataError::TemplateWithCaptions {
            path: path.to_path_buf(),
        });
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let pairs = match ext.as_deref() {
        Some("jsonl" | "json") => json_lines(path, &text, columns, base)?,
        Some("csv") => csv_rows(path, &text, columns, base)?,
        _ => {
            return Err(DataError::Format {
                path: path.to_path_buf(),
            });
        }
    };
    if pairs.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            expected: format!("rows with `{}` and `{}`", columns.image, columns.caption),
        });
    }
    Ok(pairs)
}

fn json_lines(path: &Path, text: &str, columns: &Columns, base: &Path) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let row_err = |message: String| DataError::Row {
            path: path.to_path_buf(),
            line,
            message,
        };
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(raw).map_err(|e| row_err(format!("invalid JSON: {e}")))?;
        let Value::Object(row) = value else {
            return Err(row_err("expected one JSON object per line".into()));
        };
        let field = |name: &str| -> Result<String> {
            match row.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                None => Err(row_err(format!("no `{name}` field"))),
                Some(other) => Err(row_err(format!("`{name}`: expected a string, got {other}"))),
            }
        };
        pairs.push(pair(base, field(&columns.image)?, field(&columns.caption)?));
    }
    Ok(pairs)
}

fn csv_rows(path: &Path, text: &str, columns: &Columns, base: &Path) -> Result<Vec<Pair>> {
    if text.trim().is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            expected: format!(
                "a header row naming `{}` and `{}`, then one row per pair",
                columns.image, columns.caption
            ),
        });
    }
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header_err = |message: String| DataError::Row {
        path: path.to_path_buf(),
        line: 1,
        message,
    };
    let headers = reader
        .headers()
        .map_err(|e| header_err(format!("invalid CSV header: {e}")))?
        .clone();
    let find = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                header_err(format!(
                    "no `{name}` column (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            })
    };
    let (image_col, caption_col) = (find(&columns.image)?, find(&columns.caption)?);
    let mut pairs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| DataError::Row {
            path: path.to_path_buf(),
            line: e.position().map_or(0, |p| p.line() as usize),
            message: format!("invalid CSV row: {e}"),
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let cell = |col: usize, name: &str| -> Result<String> {
            match record.get(col).map(str::trim) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(DataError::Row {
                    path: path.to_path_buf(),
                    line,
                    message: format!("`{name}` is empty"),
                }),
            }
        };
        pairs.push(pair(
            base,
            cell(image_col, &columns.image)?,
            cell(caption_col, &columns.caption)?,
        ));
    }
    // CSV cells are all text, so a numeric column (a class id, a score) named
    // as the caption would pass silently: refuse a column of numbers only.
    if !pairs.is_empty() && pairs.iter().all(|p| p.caption.parse::<f64>().is_ok()) {
        return Err(header_err(format!(
            "`{}` holds only numbers, expected caption text (is it the caption column?)",
            columns.caption
        )));
    }
    Ok(pairs)
}

fn pair(base: &Path, image: String, caption: String) -> Pair {
    let image = PathBuf::from(image);
    let image = if image.is_absolute() {
        image
    } else {
        base.join(image)
    };
    Pair { image, caption }
}

fn class_folders(dir: &Path, template: &str) -> Result<Vec<Pair>> {
    if !template.contains("{}") {
        return Err(DataError::Template {
            template: template.into(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    classes.sort();
    let mut pairs = Vec::new();
    for class in classes {
        let name = class
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let caption = template.replace("{}", &name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class)
            .map_err(io(&class))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !is_hidden(p) && is_image(p))
            .collect();
        files.sort();
        pairs.extend(files.into_iter().map(|image| Pair {
            image,
            caption: caption.clone(),
        }));
    }
    if pairs.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            expected: "class folders holding images (DIR/<class>/*.jpg)".into(),
        });
    }
    Ok(pairs)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn json_lines_resolve_relative_paths_and_ignore_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "train.jsonl",
            "{\"image\": \"a.jpg\", \"caption\": \"a cat\", \"id\": 7}\n\n{\"image\": \"/abs/b.png\", \"caption\": \"a dog\"}\n",
        );
        let pairs = load(&p, &Columns::default(), None).unwrap();
        assert_eq!(
            pairs,
            vec![
                Pair {
                    image: dir.path().join("a.jpg"),
                    caption: "a cat".into()
                },
                Pair {
                    image: PathBuf::from("/abs/b.png"),
                    caption: "a dog".into()
                },
            ]
        );
    }

    /// A template is for class names: a captioned file refuses it, naming
    /// the file and the flag, rather than training on captions it ignored.
    #[test]
    fn a_template_over_captions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "d.csv", "image,caption\na.jpg,a cat\n");
        let err = load(&p, &Columns::default(), Some("a photo of {}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&p.display().to_string()) && err.contains("--caption-template"),
            "{err}"
        );
    }

    #[test]
    fn csv_with_named_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "pairs.csv",
            "file,text,extra\nx/1.jpg,\"a red car, parked\",9\nx/2.jpg,a boat,\n",
        );
        let cols = Columns {
            image: "file".into(),
            caption: "text".into(),
        };
        let pairs = load(&p, &cols, None).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].image, dir.path().join("x/1.jpg"));
        assert_eq!(pairs[0].caption, "a red car, parked");
        let err = load(&p, &Columns::default(), None).unwrap_err().to_string();
        assert!(
            err.contains("pairs.csv:1: no `image` column (columns: file, text, extra)"),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_name_the_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "a.jsonl",
                "{\"image\": \"a.jpg\", \"caption\": 42}\n",
                "a.jsonl:1: `caption`: expected a string, got 42",
            ),
            (
                "b.jsonl",
                "{\"image\": \"a.jpg\", \"caption\": \"ok\"}\n{\"caption\": \"x\"}\n",
                "b.jsonl:2: no `image` field",
            ),
            (
                "c.jsonl",
                "[1, 2]\n",
                "c.jsonl:1: expected one JSON object per line",
            ),
            ("d.jsonl", "{not json\n", "d.jsonl:1: invalid JSON"),
            (
                "e.csv",
                "image,caption\na.jpg,\n",
                "e.csv:2: `caption` is empty",
            ),
            (
                "n.csv",
                "image,caption\na.jpg,3\nb.jpg,4.5\n",
                "n.csv:1: `caption` holds only numbers",
            ),
            ("f.jsonl", "", "f.jsonl: no image-caption pairs"),
            ("g.csv", "image,caption\n", "g.csv: no image-caption pairs"),
            ("h.txt", "image,caption\n", "h.txt: unknown data format"),
        ];
        for (name, text, want) in cases {
            let p = write(dir.path(), name, text);
            let err = load(&p, &Columns::default(), None).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(
                err.starts_with(&dir.path().display().to_string()),
                "{name}: {err}"
            );
        }
        let missing = dir.path().join("missing.jsonl");
        let err = load(&missing, &Columns::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.jsonl: cannot read"), "{err}");
    }

    #[test]
    fn class_folders_are_captioned_by_the_template() {
        let dir = tempfile::tempdir().unwrap();
        for (class, files) in [
            ("sneaker", &["2.png", "1.PNG", "notes.txt"][..]),
            ("bag", &["a.jpg"][..]),
        ] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for f in files {
                write(&dir.path().join(class), f, "x");
            }
        }
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        write(&dir.path().join(".hidden"), "x.jpg", "x");
        let pairs = load(dir.path(), &Columns::default(), Some("a photo of a {}")).unwrap();
        let got: Vec<(String, String)> = pairs
            .iter()
            .map(|p| {
                (
                    p.image
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string(),
                    p.caption.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("bag/a.jpg".into(), "a photo of a bag".into()),
                ("sneaker/1.PNG".into(), "a photo of a sneaker".into()),
                ("sneaker/2.png".into(), "a photo of a sneaker".into()),
            ]
        );
        let err = load(dir.path(), &Columns::default(), Some("a photo"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--caption-template \"a photo\""), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = load(empty.path(), &Columns::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no image-caption pairs"), "{err}");
    }
}
