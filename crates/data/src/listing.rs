//! Which image files a data set of your own holds, by split and class: an image folder
//! (torchvision's `ImageFolder` layout, one folder per split) or a CSV list (`path,label,split`,
//! the shape open-metric-learning uses). Both give the same [`Listing`], in canonical order
//! (split, then class name, then path), so the same images named either way make the same run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::DataError;

/// The splits a listing may name.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// File names taken as images in a folder (compared without case); anything else is ignored
/// (a README, a `.DS_Store`), as torchvision's `IMG_EXTENSIONS` does.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "webp", "jfif"];

/// One image of a listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// `train`, `val` or `test`.
    pub split: &'static str,
    pub class: String,
    /// Path as written (relative to the folder or the CSV file), the tie-break of the order.
    pub name: String,
    /// Where the file is.
    pub path: PathBuf,
}

/// Every image of a data set of your own, in canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// What the listing was read from, for messages.
    pub origin: PathBuf,
}

impl Listing {
    /// The sorted class names of one split.
    #[must_use]
    pub fn classes(&self, split: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.split == split)
            .map(|e| e.class.clone())
            .collect();
        names.dedup();
        names
    }

    /// Whether any image is in `split`.
    #[must_use]
    pub fn has(&self, split: &str) -> bool {
        self.entries.iter().any(|e| e.split == split)
    }

    fn canonical(mut entries: Vec<Entry>, origin: PathBuf) -> Self {
        let rank = |s: &str| SPLITS.iter().position(|&x| x == s).unwrap_or(SPLITS.len());
        entries.sort_by(|a, b| {
            (rank(a.split), &a.class, &a.name).cmp(&(rank(b.split), &b.class, &b.name))
        });
        Self { entries, origin }
    }
}

fn split_name(name: &str) -> Option<&'static str> {
    SPLITS.into_iter().find(|&s| s == name)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The entries of `dir`, sorted, each with whether it is a folder (from the directory entry:
/// no `stat` per file where the file system says; a symbolic link is followed).
fn read_dir_sorted(dir: &Path) -> Result<Vec<(PathBuf, bool)>, DataError> {
    let mut paths = std::fs::read_dir(dir)
        .map_err(DataError::io(dir))?
        .map(|e| {
            let e = e.map_err(DataError::io(dir))?;
            let folder = match e.file_type() {
                Ok(t) if t.is_symlink() => e.path().is_dir(),
                Ok(t) => t.is_dir(),
                Err(_) => e.path().is_dir(),
            };
            Ok((e.path(), folder))
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    paths.sort();
    Ok(paths)
}

/// Image files under `dir` (any depth below the class folder, as `ImageFolder`), sorted.
fn images_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for (path, folder) in read_dir_sorted(dir)? {
        if folder {
            images_below(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// `dir/train/<class>/…`, `dir/test/<class>/…` and, if present, `dir/val/<class>/…`.
pub fn read_folder(dir: &Path) -> Result<Listing, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            hint: "data.dir of a folder set must hold train/<class>/ and test/<class>/ folders"
                .into(),
        });
    }
    let mut entries = Vec::new();
    for split in SPLITS {
        let split_dir = dir.join(split);
        if !split_dir.is_dir() {
            if split == "val" {
                continue;
            }
            return Err(DataError::Missing {
                path: split_dir,
                hint: format!("a folder set needs {split}/<class>/<image> below data.dir"),
            });
        }
        let class_dirs: Vec<PathBuf> = read_dir_sorted(&split_dir)?
            .into_iter()
            .filter_map(|(path, folder)| folder.then_some(path))
            .collect();
        // Each class folder listed on its own thread (a cached reload is mostly listing and
        // reading), then taken in order: the same entries and the same first error.
        let listed: Vec<Result<Vec<PathBuf>, DataError>> = class_dirs
            .par_iter()
            .map(|class_dir| {
                let mut files = Vec::new();
                images_below(class_dir, &mut files).map(|()| files)
            })
            .collect();
        let classes = class_dirs.len();
        for (class_dir, files) in class_dirs.into_iter().zip(listed) {
            let class = class_dir
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    DataError::Invalid(format!(
                        "{}: the class folder's name is not UTF-8",
                        class_dir.display()
                    ))
                })?
                .to_string();
            let files = files?;
            if files.is_empty() {
                return Err(DataError::Invalid(format!(
                    "{}: class folder holds no images ({})",
                    class_dir.display(),
                    IMAGE_EXTENSIONS.join(", ")
                )));
            }
            for path in files {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                entries.push(Entry {
                    split,
                    class: class.clone(),
                    name,
                    path,
                });
            }
        }
        if classes == 0 {
            return Err(DataError::Invalid(format!(
                "{}: holds no class folders (expected {split}/<class>/<image>)",
                split_dir.display()
            )));
        }
    }
    Ok(Listing::canonical(entries, dir.to_path_buf()))
}

/// A CSV with a header naming the columns `path`, `label` and `split` (in any order; other
/// columns are ignored). Paths are relative to the file's folder unless absolute.
pub fn read_csv(file: &Path) -> Result<Listing, DataError> {
    let text = std::fs::read(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: file.to_path_buf(),
            hint: "data.file of a csv set must be a CSV of path,label,split rows".into(),
        },
        _ => DataError::Io {
            path: file.to_path_buf(),
            cause: e,
        },
    })?;
    let base = file.parent().unwrap_or(Path::new(""));
    let invalid = |line: u64, what: String| {
        DataError::Invalid(format!("{} line {line}: {what}", file.display()))
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_slice());
    let header = reader
        .headers()
        .map_err(|e| invalid(1, e.to_string()))?
        .clone();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            invalid(
                1,
                format!(
                    "the header must name the columns path, label and split (found: {})",
                    header.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (path_col, label_col, split_col) = (column("path")?, column("label")?, column("split")?);
    let mut entries = Vec::new();
    let mut seen = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            invalid(line, e.to_string())
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        let field = |i: usize| record.get(i).unwrap_or("");
        let (name, class, split) = (field(path_col), field(label_col), field(split_col));
        let split = split_name(split).ok_or_else(|| {
            invalid(
                line,
                format!("split {split:?} is not one of {}", SPLITS.join(", ")),
            )
        })?;
        if name.is_empty() || class.is_empty() {
            return Err(invalid(line, "empty path or label".into()));
        }
        let path = base.join(name);
        if !path.is_file() {
            return Err(invalid(
                line,
                format!("{} does not exist or is not a file", path.display()),
            ));
        }
        if let Some(first) = seen.insert(name.to_string(), line) {
            return Err(invalid(
                line,
                format!("{name} is listed twice (first on line {first})"),
            ));
        }
        entries.push(Entry {
            split,
            class: class.to_string(),
            name: name.to_string(),
            path,
        });
    }
    for split in ["train", "test"] {
        if !entries.iter().any(|e| e.split == split) {
            return Err(DataError::Invalid(format!(
                "{}: no row has split {split}; a data set needs train and test images",
                file.display()
            )));
        }
    }
    Ok(Listing::canonical(entries, file.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        for f in [
            "train/cat/b.png",
            "train/cat/a.jpg",
            "train/dog/z.JPEG",
            "train/dog/notes.txt",
            "test/dog/1.png",
            "test/cat/2.png",
        ] {
            touch(&dir.path().join(f));
        }
        dir
    }

    #[test]
    fn a_folder_lists_images_by_split_class_and_name() {
        let dir = folder();
        let listing = read_folder(dir.path()).expect("folder");
        let got: Vec<(&str, &str, &str)> = listing
            .entries
            .iter()
            .map(|e| (e.split, e.class.as_str(), e.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("train", "cat", "train/cat/a.jpg"),
                ("train", "cat", "train/cat/b.png"),
                ("train", "dog", "train/dog/z.JPEG"),
                ("test", "cat", "test/cat/2.png"),
                ("test", "dog", "test/dog/1.png"),
            ]
        );
        assert_eq!(listing.classes("train"), ["cat", "dog"]);
        assert!(!listing.has("val"));
    }

    #[test]
    fn a_csv_in_any_row_order_lists_the_same_images() {
        let dir = folder();
        let csv = "split,label,path,extra\n test,dog,test/dog/1.png,x\ntrain,cat,train/cat/b.png,\ntrain,dog,train/dog/z.JPEG,\ntest,cat,test/cat/2.png,\ntrain,cat,train/cat/a.jpg,\n";
        std::fs::write(dir.path().join("list.csv"), csv).expect("csv");
        let from_csv = read_csv(&dir.path().join("list.csv")).expect("csv");
        let from_folder = read_folder(dir.path()).expect("folder");
        assert_eq!(from_csv.entries, from_folder.entries);
    }

    #[test]
    fn bad_layouts_and_rows_name_the_file() {
        let dir = folder();
        std::fs::remove_dir_all(dir.path().join("test")).expect("rm");
        let err = read_folder(dir.path()).expect_err("no test").to_string();
        assert!(
            err.contains("test: missing") && err.contains("test/<class>"),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("test/empty")).expect("mkdir");
        let err = read_folder(dir.path())
            .expect_err("empty class")
            .to_string();
        assert!(
            err.contains("test/empty: class folder holds no images"),
            "{err}"
        );

        let file = dir.path().join("l.csv");
        let case = |text: &str| {
            std::fs::write(&file, text).expect("csv");
            read_csv(&file).expect_err(text).to_string()
        };
        let err = case("path,label,split\ntrain/cat/a.jpg,cat,holdout\n");
        assert!(err.contains("l.csv line 2: split \"holdout\""), "{err}");
        let err = case("path,label,split\ntrain/cat/gone.png,cat,train\n");
        assert!(
            err.contains("line 2") && err.contains("gone.png does not exist"),
            "{err}"
        );
        let err = case("file,class,split\n");
        assert!(err.contains("line 1: the header must name"), "{err}");
        let err = case("path,label,split\ntrain/cat/a.jpg,cat,train\n");
        assert!(err.contains("no row has split test"), "{err}");
        let err = case("path,label,split\ntrain/cat/a.jpg,cat,train\ntrain/cat/a.jpg,dog,test\n");
        assert!(
            err.contains("line 3") && err.contains("listed twice"),
            "{err}"
        );
    }
}
