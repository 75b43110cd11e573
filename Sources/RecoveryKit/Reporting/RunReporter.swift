import BackupStorage
import Foundation

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

    private func writeMetrics(success: Bool, code: Int32, values: [String: Double]) {
        guard let metricsFile else { return }
        let labelText = (["tool": tool].merging(labels) { first, _ in first })
            .sorted { $0.key < $1.key }.map { "\($0.key)=\"\(Self.escape($0.value))\"" }.joined(separator: ",")
        let now = Date().timeIntervalSince1970
        let previousSuccess = success ? now : Self.previousValue(in: metricsFile, metric: "dbrecovery_last_success_timestamp_seconds")
        var lines = [
            "# HELP dbrecovery_last_run_success 1 if the last run succeeded, else 0.",
            "# TYPE dbrecovery_last_run_success gauge",
            "dbrecovery_last_run_success{\(labelText)} \(success ? 1 : 0)",
            "# HELP dbrecovery_last_exit_code Exit code of the last run (README: Exit codes).",
            "# TYPE dbrecovery_last_exit_code gauge",
            "dbrecovery_last_exit_code{\(labelText)} \(code)",
            "# HELP dbrecovery_last_run_timestamp_seconds When the last run ended.",
            "# TYPE dbrecovery_last_run_timestamp_seconds gauge",
            "dbrecovery_last_run_timestamp_seconds{\(labelText)} \(Self.number(now))",
            "# HELP dbrecovery_last_run_duration_seconds How long the last run took.",
            "# TYPE dbrecovery_last_run_duration_seconds gauge",
            "dbrecovery_last_run_duration_seconds{\(labelText)} \(Self.number(Date().timeIntervalSince(started)))",
        ]
        if let previousSuccess {
            lines += ["# HELP dbrecovery_last_success_timestamp_seconds When a run last succeeded; alert when it gets old.",
                      "# TYPE dbrecovery_last_success_timestamp_seconds gauge",
                      "dbrecovery_last_success_timestamp_seconds{\(labelText)} \(Self.number(previousSuccess))"]
        }
        for (name, value) in values.sorted(by: { $0.key < $1.key }) {
            lines += ["# HELP dbrecovery_\(name) \(Self.help(for: name, tool: tool))",
                      "# TYPE dbrecovery_\(name) gauge", "dbrecovery_\(name){\(labelText)} \(Self.number(value))"]
        }
        let temporary = metricsFile + ".tmp-\(getpid())"
        do {
            try (lines.joined(separator: "\n") + "\n").write(toFile: temporary, atomically: false, encoding: .utf8)
            guard rename(temporary, metricsFile) == 0 else { throw RecoveryError(.failure, String(cString: strerror(errno))) }
        } catch {
            unlink(temporary)
            // One line, the system's reason (a CocoaError would print its whole userInfo dump).
            FileHandle.standardError.write(Data("\(tool): warning: cannot write metrics file \(metricsFile): \(RecoveryError.classify(error).message)\n".utf8))
        }
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

    static func previousValue(in path: String, metric: String) -> Double? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix(metric + "{") }.flatMap { $0.split(separator: " ").last }.flatMap { Double($0) }
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(format: "%.3f", value)
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: " ")
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
            FileHandle.standardError.write(Data("\(tool): warning: notification to \(url.host ?? "?") failed: \(problem)\n".utf8))
        }
    }
}
