//! docs/architecture.md against the code: its dependency table is `ALLOWED`, and its rft-cli
//! section lists the commands `rft --help` lists.

use super::{read, workspace_crates, workspace_root, ALLOWED};

fn architecture_doc() -> String {
    read(&workspace_root().join("docs/architecture.md"))
}

/// The text of a markdown section: from its heading line to the next heading of the same level
/// or above.
fn doc_section(doc: &str, heading: &str) -> String {
    let level = heading.split(' ').next().unwrap();
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/architecture.md has no `{heading}` section"));
    let body = &doc[start + heading.len() + 2..];
    let end = body
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level.len() && line[hashes..].starts_with(' ')
        })
        .map_or(body.len(), |(at, _)| at);
    body[..end].to_owned()
}

/// `text` without its parenthesised remarks.
fn without_remarks(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The rows of the doc's dependency table: (crate, its workspace crates, the notable outside
/// crates named and whether the row says they are all of them, "…: nothing else").
fn doc_dependency_table() -> Vec<(String, Vec<String>, Vec<String>, bool)> {
    let section = doc_section(&architecture_doc(), "## Dependencies");
    let crates = workspace_crates();
    let mut rows: Vec<(String, Vec<String>, Vec<String>, bool)> = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            cells.len(),
            3,
            "docs/architecture.md: a dependency row of three cells: {line}"
        );
        let krate = cells[0].trim_matches('`').to_owned();
        // "types, grade", "—", "all of the above", "all but the store"; remarks in parentheses.
        let workspace_cell = without_remarks(cells[1]);
        let workspace_cell = workspace_cell.trim();
        let named = |names: &str| -> Vec<String> {
            names
                .split(',')
                .map(|name| {
                    let name = name.trim().trim_start_matches("the ").trim_matches('`');
                    let name = format!("rft-{}", name.trim_start_matches("rft-"));
                    assert!(
                        crates.contains(&name),
                        "docs/architecture.md, {krate}'s row: {name} is not a workspace crate"
                    );
                    name
                })
                .collect()
        };
        let above: Vec<String> = rows.iter().map(|(k, ..)| k.clone()).collect();
        let mut workspace = match workspace_cell {
            "—" | "-" | "" => Vec::new(),
            "all of the above" => above,
            _ => match workspace_cell.strip_prefix("all but ") {
                Some(except) => {
                    let except = named(except);
                    above.into_iter().filter(|k| !except.contains(k)).collect()
                }
                None => named(workspace_cell),
            },
        };
        workspace.sort();
        let (notable, exhaustive) = match cells[2].strip_suffix(": nothing else") {
            Some(all) => (all, true),
            None => (cells[2], false),
        };
        let notable = without_remarks(notable)
            .replace(" and ", ",")
            .split([',', '/'])
            .map(|name| name.trim().trim_matches('`').to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        rows.push((krate, workspace, notable, exhaustive));
    }
    rows
}

#[test]
fn the_docs_dependency_table_is_the_allowed_table() {
    let rows = doc_dependency_table();
    let doc_crates: Vec<&str> = rows.iter().map(|(k, ..)| k.as_str()).collect();
    let allowed_crates: Vec<&str> = ALLOWED.iter().map(|(k, ..)| *k).collect();
    assert_eq!(
        doc_crates, allowed_crates,
        "docs/architecture.md's dependency table has the crates of ALLOWED, in its order"
    );
    for ((krate, workspace, notable, exhaustive), (_, allowed_workspace, allowed_outside)) in
        rows.iter().zip(ALLOWED)
    {
        let mut allowed_workspace = allowed_workspace.to_vec();
        allowed_workspace.sort_unstable();
        assert_eq!(
            workspace, &allowed_workspace,
            "docs/architecture.md: {krate}'s workspace crates differ from ALLOWED's"
        );
        for name in notable {
            assert!(
                allowed_outside.contains(&name.as_str()),
                "docs/architecture.md names {name} for {krate}, which ALLOWED does not list"
            );
        }
        if *exhaustive {
            let mut named: Vec<&str> = notable.iter().map(String::as_str).collect();
            named.sort_unstable();
            let mut allowed_outside = allowed_outside.to_vec();
            allowed_outside.sort_unstable();
            assert_eq!(
                named, allowed_outside,
                "docs/architecture.md says {krate} uses nothing else: list ALLOWED's outside crates"
            );
        }
    }
}

/// The `rft` commands docs/architecture.md's rft-cli section lists, as words after `rft`, with
/// `a|b` alternatives spelled out: `rft models list|pull` is `models list` and `models pull`.
fn doc_cli_commands() -> Vec<String> {
    let section = doc_section(&architecture_doc(), "### `rft-cli`");
    let list = section
        .lines()
        .find(|line| line.starts_with("`rft "))
        .expect("the rft-cli section opens with the list of commands");
    let mut commands = Vec::new();
    for span in list
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("rft "))
    {
        let words: Vec<&str> = span.split_whitespace().skip(1).collect();
        let (last, first) = words.split_last().expect("a command after `rft`");
        for alternative in last.split('|') {
            let mut command: Vec<&str> = first.to_vec();
            command.push(alternative);
            commands.push(command.join(" "));
        }
    }
    commands.sort();
    commands
}

/// The subcommands `rft ARGS --help` lists under "Commands:" (clap's help), without `help`.
fn help_subcommands(args: &[&str]) -> Vec<String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(args)
        .arg("--help")
        .env_remove("RFT_LOG")
        .output()
        .expect("the rft binary runs");
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "rft {args:?} --help: {help}");
    let Some((_, commands)) = help.split_once("\nCommands:\n") else {
        return Vec::new();
    };
    commands
        .lines()
        .take_while(|line| !line.trim().is_empty())
        // A name sits two spaces in; a wrapped description further in.
        .filter(|line| line.starts_with("  ") && !line[2..].starts_with(' '))
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .filter(|name| name != "help")
        .collect()
}

#[test]
fn the_docs_command_list_is_the_clis() {
    // Every leaf of the command tree, as `rft --help` and each command's `--help` list them.
    let mut commands = Vec::new();
    let mut pending: Vec<Vec<String>> = help_subcommands(&[])
        .into_iter()
        .map(|name| vec![name])
        .collect();
    assert!(pending.len() > 5, "rft --help lists its commands");
    while let Some(path) = pending.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let children = help_subcommands(&args);
        if children.is_empty() {
            commands.push(path.join(" "));
        }
        for child in children {
            let mut longer = path.clone();
            longer.push(child);
            pending.push(longer);
        }
    }
    commands.sort();
    let documented = doc_cli_commands();
    let missing: Vec<&String> = commands
        .iter()
        .filter(|c| !documented.contains(c))
        .collect();
    let extra: Vec<&String> = documented
        .iter()
        .filter(|c| !commands.contains(c))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/architecture.md's rft-cli section lists the CLI's commands: missing {missing:?}, \
         not commands {extra:?}"
    );
}
