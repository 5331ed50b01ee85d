//! The store against hostile and crashed states: many objects paged in SQL, deletes that are
//! all or nothing, owner-only permissions, and blobs a crash left behind. The behaviour tests
//! run on both databases: SQLite, and PostgreSQL when `RFT_TEST_DATABASE_URL` names one (CI
//! starts it; with `RFT_REQUIRE_SERVICES` set, its absence fails them).

mod support;

use std::path::Path;

use rft_store::{BodyFilter, ListQuery, Page, Store, StoreError};
use serde_json::{json, Value};

fn ids(page: &Page) -> Vec<String> {
    page.data
        .iter()
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every page of a query, following `after` until `has_more` is false.
fn all_pages(store: &Store, kind: &str, query: &ListQuery<'_>) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(
            kind,
            &ListQuery {
                after: after.as_deref(),
                ..query.clone()
            },
        )?;
        assert!(page.data.len() <= query.limit);
        out.extend(ids(&page));
        if !page.has_more {
            assert!(page.data.len() <= query.limit);
            return Ok(out);
        }
        assert_eq!(
            page.data.len(),
            query.limit,
            "a page with more to come is full"
        );
        after = out.last().cloned();
    }
}

fn job(i: usize) -> Value {
    // Metadata: every third job has none, others vary; keys include characters that would
    // break a JSON path if they were spliced into one.
    let metadata = match i % 3 {
        0 => Value::Null,
        1 => json!({"team": if i.is_multiple_of(2) {"a"} else {"b"}, "we\"ird.key[0]": "yes"}),
        _ => json!({}),
    };
    json!({"id": format!("ftjob-{i:04}"), "status": if i.is_multiple_of(4) {"running"} else {"queued"},
           "metadata": metadata})
}

#[test]
fn lists_page_filter_and_report_has_more_in_sql() -> Result<(), StoreError> {
    support::on_each_backend(lists_page_filter_and_report_has_more)
}

fn lists_page_filter_and_report_has_more(store: &Store) -> Result<(), StoreError> {
    let n = 250;
    for i in 0..n {
        store.insert("job", None, &job(i))?;
        let purpose = if i.is_multiple_of(2) {
            "fine-tune"
        } else {
            "evals"
        };
        store.insert(
            "file",
            None,
            &json!({"id": format!("file-{i:04}"), "purpose": purpose, "status": "processed"}),
        )?;
    }
    // A file whose purpose is not a string never matches a string filter.
    store.insert("file", None, &json!({"id": "file-odd", "purpose": 7}))?;
    // Children of two parents, with statuses.
    for i in 0..60usize {
        let parent = if i.is_multiple_of(2) {
            "evalrun-a"
        } else {
            "evalrun-b"
        };
        let status = if i.is_multiple_of(3) { "pass" } else { "fail" };
        store.insert(
            "output_item",
            Some(parent),
            &json!({"id": format!("item-{i:03}"), "status": status}),
        )?;
    }

    let expect = |filter: &dyn Fn(usize) -> bool, descending: bool| -> Vec<String> {
        let mut v: Vec<String> = (0..n)
            .filter(|&i| filter(i))
            .map(|i| format!("ftjob-{i:04}"))
            .collect();
        if descending {
            v.reverse();
        }
        v
    };

    // Plain paging, both orders, page sizes that do and do not divide the count.
    for limit in [1, 7, 50, 250, 1000] {
        for descending in [false, true] {
            let query = ListQuery {
                descending,
                limit,
                ..ListQuery::default()
            };
            assert_eq!(
                all_pages(store, "job", &query)?,
                expect(&|_| true, descending),
                "limit {limit}, descending {descending}"
            );
        }
    }
    let first = store.list(
        "job",
        &ListQuery {
            limit: 10,
            ..ListQuery::default()
        },
    )?;
    assert!(first.has_more);
    assert_eq!(ids(&first)[0], "ftjob-0000");
    let exact = store.list(
        "job",
        &ListQuery {
            limit: n,
            ..ListQuery::default()
        },
    )?;
    assert_eq!(exact.data.len(), n);
    assert!(!exact.has_more);
    // usize::MAX must not wrap into SQLite's "no limit" or overflow.
    let everything = store.list(
        "job",
        &ListQuery {
            limit: usize::MAX,
            ..ListQuery::default()
        },
    )?;
    assert_eq!(everything.data.len(), n);
    assert!(!everything.has_more);

    // Status, metadata entries and "metadata is null or empty".
    let query = ListQuery {
        status: Some("running"),
        limit: 9,
        ..ListQuery::default()
    };
    assert_eq!(
        all_pages(store, "job", &query)?,
        expect(&|i| i.is_multiple_of(4), false)
    );
    let query = ListQuery {
        descending: true,
        limit: 8,
        body: vec![BodyFilter::EntryEquals {
            field: "metadata",
            key: "team",
            value: "b",
        }],
        ..ListQuery::default()
    };
    assert_eq!(
        all_pages(store, "job", &query)?,
        expect(&|i| i % 3 == 1 && i % 2 == 1, true)
    );
    let query = ListQuery {
        limit: 8,
        body: vec![
            BodyFilter::EntryEquals {
                field: "metadata",
                key: "we\"ird.key[0]",
                value: "yes",
            },
            BodyFilter::EntryEquals {
                field: "metadata",
                key: "team",
                value: "a",
            },
        ],
        ..ListQuery::default()
    };
    assert_eq!(
        all_pages(store, "job", &query)?,
        expect(&|i| i % 3 == 1 && i.is_multiple_of(2), false)
    );
    let query = ListQuery {
        limit: 6,
        body: vec![BodyFilter::Empty { field: "metadata" }],
        ..ListQuery::default()
    };
    assert_eq!(
        all_pages(store, "job", &query)?,
        expect(&|i| i % 3 != 1, false)
    );
    // A missing field counts as empty too.
    store.insert(
        "job",
        None,
        &json!({"id": "ftjob-bare", "status": "queued"}),
    )?;
    let bare = store.list(
        "job",
        &ListQuery {
            descending: true,
            limit: 1,
            ..query.clone()
        },
    )?;
    assert_eq!(ids(&bare), ["ftjob-bare"]);

    // Files by purpose.
    let query = ListQuery {
        descending: true,
        limit: 33,
        body: vec![BodyFilter::Equals {
            field: "purpose",
            value: "fine-tune",
        }],
        ..ListQuery::default()
    };
    let expected: Vec<String> = (0..n)
        .rev()
        .filter(|&i| i.is_multiple_of(2))
        .map(|i| format!("file-{i:04}"))
        .collect();
    assert_eq!(all_pages(store, "file", &query)?, expected);
    let seven = ListQuery {
        limit: 10,
        body: vec![BodyFilter::Equals {
            field: "purpose",
            value: "7",
        }],
        ..ListQuery::default()
    };
    assert!(store.list("file", &seven)?.data.is_empty());

    // Children by parent and status.
    let query = ListQuery {
        parent: Some("evalrun-a"),
        status: Some("pass"),
        limit: 3,
        ..ListQuery::default()
    };
    let expected: Vec<String> = (0..60usize)
        .filter(|&i| i.is_multiple_of(2) && i.is_multiple_of(3))
        .map(|i| format!("item-{i:03}"))
        .collect();
    assert_eq!(all_pages(store, "output_item", &query)?, expected);

    // Cursors: one that does not match the filters still positions the page; an unknown one,
    // or one of another kind, gives an empty page.
    let after_unmatched = store.list(
        "job",
        &ListQuery {
            after: Some("ftjob-0001"),
            limit: 2,
            status: Some("running"),
            ..ListQuery::default()
        },
    )?;
    assert_eq!(ids(&after_unmatched), ["ftjob-0004", "ftjob-0008"]);
    for cursor in ["ftjob-nope", "file-0001"] {
        let page = store.list(
            "job",
            &ListQuery {
                after: Some(cursor),
                limit: 5,
                ..ListQuery::default()
            },
        )?;
        assert!(page.data.is_empty() && !page.has_more, "{cursor}");
    }
    Ok(())
}

fn temp() -> Result<tempfile::TempDir, StoreError> {
    tempfile::tempdir().map_err(|source| StoreError::Io {
        path: "tmp".into(),
        source,
    })
}

fn count(store: &Store, kind: &str) -> Result<usize, StoreError> {
    Ok(store
        .list(
            kind,
            &ListQuery {
                limit: usize::MAX,
                ..ListQuery::default()
            },
        )?
        .data
        .len())
}

#[test]
fn delete_removes_all_descendants_in_one_transaction() -> Result<(), StoreError> {
    support::on_each_backend(delete_removes_all_descendants)
}

fn delete_removes_all_descendants(store: &Store) -> Result<(), StoreError> {
    store.insert("eval", None, &json!({"id": "eval-1"}))?;
    store.insert("eval", None, &json!({"id": "eval-2"}))?;
    for run in 0..3 {
        let run_id = format!("evalrun-{run}");
        store.insert("eval_run", Some("eval-1"), &json!({"id": run_id}))?;
        for item in 0..4 {
            store.insert(
                "output_item",
                Some(&run_id),
                &json!({"id": format!("item-{run}-{item}")}),
            )?;
        }
    }
    store.insert("eval_run", Some("eval-2"), &json!({"id": "evalrun-other"}))?;
    store.insert(
        "output_item",
        Some("evalrun-other"),
        &json!({"id": "item-other"}),
    )?;

    // A delete that fails half way (here a trigger refuses the eval's own row, after its
    // children would have gone) must leave everything in place.
    support::side_sql(
        store,
        "CREATE TRIGGER refuse BEFORE DELETE ON objects WHEN OLD.id = 'eval-1'
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN
             IF OLD.id = 'eval-1' THEN RAISE EXCEPTION 'refused'; END IF; RETURN OLD; END $$
         LANGUAGE plpgsql;
         CREATE TRIGGER refuse BEFORE DELETE ON objects FOR EACH ROW EXECUTE FUNCTION refuse();",
    )?;
    assert!(store.delete("eval-1").is_err());
    assert_eq!(count(store, "eval_run")?, 4);
    assert_eq!(count(store, "output_item")?, 13);
    support::side_sql(
        store,
        "DROP TRIGGER refuse;",
        "DROP TRIGGER refuse ON objects;",
    )?;

    assert!(store.delete("eval-1")?);
    assert!(store.get("eval", "eval-1")?.is_none());
    // Runs and their output items went with it; the other eval's did not.
    assert_eq!(count(store, "eval_run")?, 1);
    assert_eq!(count(store, "output_item")?, 1);
    assert!(store.get("output_item", "item-other")?.is_some());
    assert!(!store.delete("eval-1")?);
    Ok(())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[cfg(unix)]
#[test]
fn the_data_folder_is_the_owners_only() -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp()?;
    let root = dir.path().join("data");
    let io = |source| StoreError::Io {
        path: "setup".into(),
        source,
    };
    Store::open(&root)?.insert("file", None, &json!({"id": "file-old"}))?;
    // An existing folder, as an older version (or the umask) left it.
    for path in [root.clone(), root.join("files"), root.join("jobs")] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    std::fs::write(root.join("files/file-old"), b"old").map_err(io)?;
    for file in ["files/file-old", "openrft.db"] {
        std::fs::set_permissions(root.join(file), std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    let store = Store::open(&root)?;
    store.write_blob("file-new", b"new")?;
    store.insert("file", None, &json!({"id": "file-new"}))?;
    for dir in [root.clone(), root.join("files"), root.join("jobs")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in [
        "openrft.db",
        "openrft.db-wal",
        "openrft.db-shm",
        "files/file-old",
        "files/file-new",
    ] {
        let path = root.join(file);
        assert!(path.exists(), "{}", path.display());
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    Ok(())
}

#[test]
fn opening_removes_blobs_no_file_refers_to() -> Result<(), StoreError> {
    let dir = temp()?;
    let io = |source| StoreError::Io {
        path: "setup".into(),
        source,
    };
    {
        let store = Store::open(dir.path())?;
        store.write_blob("file-kept", b"kept")?;
        store.insert("file", None, &json!({"id": "file-kept"}))?;
        // A crash between writing the blob and recording it.
        store.write_blob("file-crashed", b"lost")?;
        // A crash between writing a temporary file and renaming it.
        let temp = rft_types::paths::temp_path(&store.file_path("file-torn"));
        std::fs::write(&temp, b"half").map_err(io)?;
        // Not a blob: folders are left alone.
        std::fs::create_dir_all(dir.path().join("files/some-folder")).map_err(io)?;
    }
    let store = Store::open(dir.path())?;
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("files"))
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["file-kept", "some-folder"]);
    assert_eq!(
        std::fs::read(store.file_path("file-kept")).map_err(io)?,
        b"kept"
    );
    Ok(())
}
