import BackupStorage
import Foundation
import ProcessSignals

/// Reports how a run ended to monitoring: a Prometheus textfile (`--metrics-file`, for
/// node_exporter's textfile collector) and a JSON event posted to `--notify-url`.
public final class RunReporter: Sendable {
    public let tool: String
    public let metricsFile: String?
    public let notifyURL: String?
    public let notifyOnSuccess: Bool
    public let labels: [String: String]
    private let started = Date()

    public init(tool: String, metricsFile: String?, notifyURL: String?, notifyOnSuccess: Bool, labels: [String: String]) {
        self.tool = tool
        self.metricsFile = metricsFile
        self.notifyURL = notifyURL
        self.notifyOnSuccess = notifyOnSuccess
        self.labels = labels
    }

    /// Records success with the run's own numbers (bytes, rows, kept/deleted …).
    public func succeeded(_ values: [String: Double], summary: String) {
        writeMetrics(success: true, code: 0, values: values)
        if notifyOnSuccess { notify(status: "success", code: 0, message: summary, hint: nil) }
    }

    /// Records failure; the last success time in the metrics file is kept.
    public func failed(_ error: RecoveryError) {
        writeMetrics(success: false, code: error.code.rawValue, values: [:])
        notify(status: "failure", code: error.code.rawValue, message: error.message, hint: error.hint)
    }

    // MARK: - Metrics

    /// Writes this run's series into the metrics file, atomically, keeping every other run's series
    /// in it: one file may be shared by several databases' runs (`metrics_file` in the config file,
    /// one `METRICS_DIR` for several databases' nightly jobs) and by several tools, and a run that
    /// rewrote it whole erased the others' series — and took their "last success" for its own, so
    /// that `billing`'s failing backups read as fresh after `app`'s. A series is the run's own by its
    /// labels (tool, kind or mode or check, database); writers of one file take turns (`flock`).
    private func writeMetrics(success: Bool, code: Int32, values: [String: Double]) {
        guard let metricsFile else { return }
        let own = ["tool": tool].merging(labels) { first, _ in first }
        let labelText = Self.labelText(own)
        // What this run wrote before the `database` and `repository` labels existed: its own series
        // too (replaced, not left to go stale and alert for ever).
        let unlabelled = Self.labelText(own.filter { !Self.addedLabels.contains($0.key) })
        let turn = MetricsFileTurn(metricsFile)
        defer { turn.end() }
        var file = MetricsText((try? String(contentsOfFile: metricsFile, encoding: .utf8)) ?? "")
        let now = Date().timeIntervalSince1970
        let previousSuccess = success ? now : file.value(of: "dbrecovery_last_success_timestamp_seconds", labels: labelText)
        // By bytes: the series of NFC "café" are not NFD "café"'s (String == treats them as one).
        file.remove { $0.utf8.elementsEqual(labelText.utf8) || $0.utf8.elementsEqual(unlabelled.utf8) }
        file.add("dbrecovery_last_run_success", help: "1 if the last run succeeded, else 0.", labels: labelText, value: success ? "1" : "0")
        file.add("dbrecovery_last_exit_code", help: "Exit code of the last run (README: Exit codes).", labels: labelText, value: "\(code)")
        file.add("dbrecovery_last_run_timestamp_seconds", help: "When the last run ended.", labels: labelText, value: Self.number(now))
        file.add("dbrecovery_last_run_duration_seconds", help: "How long the last run took.", labels: labelText,
                 value: Self.number(Date().timeIntervalSince(started)))
        if let previousSuccess {
            file.add("dbrecovery_last_success_timestamp_seconds", help: "When a run last succeeded; alert when it gets old.", labels: labelText,
                     value: Self.number(previousSuccess))
        }
        for (name, value) in values.sorted(by: { $0.key < $1.key }) {
            file.add("dbrecovery_\(name)", help: Self.help(for: name, tool: tool), labels: labelText, value: Self.number(value))
        }
        let temporary = metricsFile + ".tmp-\(getpid())"
        do {
            try file.text.write(toFile: temporary, atomically: false, encoding: .utf8)
            guard rename(temporary, metricsFile) == 0 else { throw RecoveryError(.failure, String(cString: strerror(errno))) }
        } catch {
            unlink(temporary)
            // One line, the system's reason (a CocoaError would print its whole userInfo dump).
            TextSink.standardError.write("\(tool): warning: cannot write metrics file \(metricsFile): \(RecoveryError.classify(error).message)\n")
        }
    }

    /// Labels a release added to series that existed without them.
    static let addedLabels: Set<String> = ["database", "repository"]

    /// `database="app",kind="logical",tool="dbbackup"`: sorted, so one run's series always read the same.
    static func labelText(_ labels: [String: String]) -> String {
        labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(escape($0.value))\"" }.joined(separator: ",")
    }

    /// The HELP text of a run's own number (promtool's lint wants one on every metric).
    static func help(for name: String, tool: String) -> String {
        let known = [
            "backup_raw_bytes": "Uncompressed size of the last backup.",
            "backup_stored_bytes": "Stored (compressed, maybe encrypted) size of the last backup.",
            "backup_tables": "Tables in the last backup.",
            "backup_rows": "Rows in the last backup (exact, from the dump's snapshot).",
            "prune_kept": "Backups kept by the last prune.",
            "prune_deleted": "Backups deleted by the last prune.",
            "prune_wal_deleted": "WAL files deleted by the last prune (no kept base backup needed them).",
            "restore_duration_seconds": "How long the last restore (or drill) took, swap included.",
            "restore_verified_tables": "Tables whose row counts the last restore verified.",
            "verify_ok": "1 if the last verification passed.",
            "verify_backups": "Backups whose files the last verification re-checked.",
            "verify_tables": "Tables whose row counts the last verification compared.",
        ]
        return known[name] ?? "\(name.replacingOccurrences(of: "_", with: " ")) reported by the last \(tool) run."
    }

    static func number(_ value: Double) -> String {
        // Rounded to milliseconds first: a value read back from the file (a kept success time) prints as it was written.
        let milliseconds = (value * 1000).rounded() / 1000
        return milliseconds == milliseconds.rounded() && abs(milliseconds) < 1e15 ? String(Int64(milliseconds)) : String(format: "%.3f", milliseconds)
    }

    /// A label value as the text format writes it: `\\`, `\"` and `\n` (a database named "nl x" and one
    /// named "nl" LF "x" are two series, not one).
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    // MARK: - Notification

    private func notify(status: String, code: Int32, message: String, hint: String?) {
        guard let notifyURL, let url = URL(string: notifyURL) else { return }
        struct Event: Encodable {
            var tool: String, status: String, exitCode: Int32, message: String, hint: String?, host: String, at: Date, durationSeconds: Double, labels: [String: String]
        }
        let event = Event(tool: tool, status: status, exitCode: code, message: message, hint: hint, host: ProcessInfo.processInfo.hostName,
                          at: Date(), durationSeconds: Date().timeIntervalSince(started), labels: labels)
        guard let body = try? JSONOutput.encoder().encode(event) else { return }
        // The same transport as S3's: 10 s without a byte, 15 s in all, so a dead receiver delays the exit little.
        var problem: String?
        do {
            let response = try HTTPTransport(idleTimeout: 10, totalTimeout: 15, maxIdleHandles: 0)
                .perform(HTTPRequest(method: "POST", url: url, headers: [(name: "Content-Type", value: "application/json")], body: body))
            if !(200..<300).contains(response.status) { problem = "HTTP \(response.status)" }
        } catch {
            problem = "\(error)"
        }
        if let problem {
            TextSink.standardError.write("\(tool): warning: notification to \(url.host ?? "?") failed: \(problem)\n")
        }
    }
}
