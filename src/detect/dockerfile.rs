//! Reading a Dockerfile's instructions: what the detector needs (the command the image starts,
//! its exposed port) without a full parser. Continuation lines, comments and both the exec
//! (`["a", "b"]`) and shell forms are handled.

/// One instruction, e.g. `("CMD", "[\"uvicorn\", \"app:app\"]")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instruction {
    /// Upper-cased keyword.
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined.
    pub rest: String,
}

/// The instructions of a Dockerfile, in order.
pub(crate) fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if !current.is_empty() && line.starts_with('#') {
            // Comment lines inside a continued instruction are dropped by Docker, too.
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        push_instruction(&mut out, std::mem::take(&mut current));
    }
    if !current.is_empty() {
        push_instruction(&mut out, current);
    }
    out
}

fn push_instruction(out: &mut Vec<Instruction>, line: String) {
    let line = line.trim();
    let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    out.push(Instruction { keyword: keyword.to_ascii_uppercase(), rest: rest.trim().to_string() });
}

/// The words of a CMD or ENTRYPOINT: the JSON array of the exec form, else the shell form split
/// on whitespace (quotes removed, which is close enough to find a program name).
pub(crate) fn command_words(rest: &str) -> Vec<String> {
    if rest.starts_with('[') {
        if let Ok(words) = serde_json::from_str::<Vec<String>>(rest) {
            return words;
        }
    }
    rest.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string()).collect()
}

/// What the image runs: the last ENTRYPOINT's words followed by the last CMD's, as Docker does
/// (a CMD before the last FROM belongs to an earlier stage and is ignored).
pub(crate) fn start_command(instructions: &[Instruction]) -> Vec<String> {
    let last_stage = instructions.iter().rposition(|i| i.keyword == "FROM").map_or(0, |p| p + 1);
    let stage = &instructions[last_stage..];
    let entrypoint = stage.iter().rev().find(|i| i.keyword == "ENTRYPOINT").map(|i| command_words(&i.rest)).unwrap_or_default();
    let cmd = stage.iter().rev().find(|i| i.keyword == "CMD").map(|i| command_words(&i.rest)).unwrap_or_default();
    entrypoint.into_iter().chain(cmd).collect()
}

/// The first TCP port the last stage EXPOSEs.
pub(crate) fn exposed_port(instructions: &[Instruction]) -> Option<u16> {
    let last_stage = instructions.iter().rposition(|i| i.keyword == "FROM").map_or(0, |p| p + 1);
    instructions[last_stage..]
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.rest.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|spec| !spec.ends_with("/udp"))
        .find_map(|spec| spec.trim_end_matches("/tcp").parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_comments_and_case() {
        let parsed = instructions("# syntax\nfrom python:3.12\nrun apt-get update && \\\n  # a note\n  apt-get install -y x\nCMD [\"uvicorn\", \"app:app\"]\n");
        let keywords: Vec<_> = parsed.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(keywords, ["FROM", "RUN", "CMD"]);
        assert_eq!(parsed[1].rest, "apt-get update &&  apt-get install -y x");
    }

    #[test]
    fn start_command_joins_entrypoint_and_cmd_of_the_last_stage() {
        let parsed = instructions("FROM a AS build\nCMD [\"gunicorn\"]\nFROM b\nENTRYPOINT [\"python\", \"-m\"]\nCMD uvicorn app:app --port 9000\n");
        assert_eq!(start_command(&parsed), ["python", "-m", "uvicorn", "app:app", "--port", "9000"]);
    }

    #[test]
    fn exposed_port_skips_udp() {
        let parsed = instructions("FROM x\nEXPOSE 53/udp 8080/tcp\n");
        assert_eq!(exposed_port(&parsed), Some(8080));
        assert_eq!(exposed_port(&instructions("FROM x\n")), None);
    }
}
