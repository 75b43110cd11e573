import Foundation
import Logging
import ProcessSignals

/// Writes swift-log records to stderr as one line each, `dbbackup: warning: <message>`, so that
/// what the libraries log (S3 retries, server notices, skipped backups) reads like the tool's own
/// messages and never reaches stdout, where `--json` and ids go.
///
/// The level comes from `--quiet` (errors only), the default (notices and warnings), `-v` (what was
/// skipped and why) and `-vv` (debug detail). The level word is coloured only on a terminal and
/// never with `NO_COLOR` set (https://no-color.org), so piped or captured stderr holds no ANSI codes.
struct StderrLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    /// The tool's name, the prefix of every line.
    let tool: String
    let coloured: Bool
    /// Where the lines go; stderr in the tools, a pipe in tests.
    let sink: TextSink

    init(tool: String, level: Logger.Level, coloured: Bool, sink: TextSink = .standardError) {
        self.tool = tool
        logLevel = level
        self.coloured = coloured
        self.sink = sink
    }

    /// Whether stderr gets colour: a terminal, and `NO_COLOR` unset or empty.
    static func wantsColour(environment: [String: String] = ProcessInfo.processInfo.environment, terminal: Bool = isatty(2) == 1) -> Bool {
        terminal && (environment["NO_COLOR"] ?? "").isEmpty
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        sink.write(Self.line(tool: tool, level: event.level, message: event.message.description,
                             metadata: metadata.merging(event.metadata ?? [:]) { _, new in new }, coloured: coloured) + "\n")
    }

    /// One record as printed: `tool: level: message (key=value, …)`.
    static func line(tool: String, level: Logger.Level, message: String, metadata: Logger.Metadata, coloured: Bool) -> String {
        let word = level == .notice ? "note" : level.rawValue
        let colour: String? = switch level {
        case .error, .critical: "31"
        case .warning: "33"
        case .notice, .info: nil
        case .debug, .trace: "2"
        }
        let label = coloured ? colour.map { "\u{1B}[\($0)m\(word)\u{1B}[0m" } ?? word : word
        let details = metadata.isEmpty ? "" : " (" + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ") + ")"
        return "\(tool): \(label): \(message)\(details)"
    }
}
