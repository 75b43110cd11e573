import Foundation
import ProcessSignals

/// Receives progress of long work: bytes moved so far. Commands draw it on a terminal.
public protocol ProgressObserver: AnyObject {
    /// - Parameters:
    ///   - phase: what is moving, with the backup id (`verify 20261124T020000Z-3fa2 dump.sql.gz`).
    ///   - bytes: moved so far in this phase.
    ///   - total: the size expected, when known, for a percentage.
    ///   - estimated: `total` is an estimate (the catalogue's table sizes for a dump), not a size.
    func progress(phase: String, bytes: UInt64, total: UInt64?, estimated: Bool)
    /// The phase ended (each file of `dbverify --files all` is a phase of its own).
    func finished()
}

extension ProgressObserver {
    /// Progress without a known total.
    public func progress(phase: String, bytes: UInt64) { progress(phase: phase, bytes: bytes, total: nil, estimated: false) }
}

/// Draws `phase: 1.2 GiB of 2.0 GiB (60%) at 85.0 MiB/s` on stderr, at most twice a second, only on
/// a terminal. The rate is measured from the start of each phase, not of the run.
public final class TerminalProgress: ProgressObserver {
    private let clock: () -> Date
    private let write: (String) -> Void
    private var phase: String?
    private var phaseStart = Date()
    private var lastBytes: UInt64 = 0
    private var lastDraw = Date.distantPast
    private var drew = false

    /// - Parameters:
    ///   - clock: the time now (tests pass their own).
    ///   - write: where the line goes (stderr; tests capture it).
    public init(clock: @escaping () -> Date = Date.init, write: @escaping (String) -> Void = { TextSink.standardError.write($0) }) {
        self.clock = clock
        self.write = write
    }

    /// A progress line if stderr is a terminal and not silenced, else nil.
    public static func ifTerminal(quiet: Bool) -> TerminalProgress? {
        (!quiet && isatty(2) == 1) ? TerminalProgress() : nil
    }

    public func progress(phase: String, bytes: UInt64, total: UInt64?, estimated: Bool) {
        let now = clock()
        // A new phase (or a counter that went back: a retried file) measures its rate afresh.
        if phase != self.phase || bytes < lastBytes {
            self.phase = phase
            phaseStart = now
            lastDraw = .distantPast
        }
        lastBytes = bytes
        guard now.timeIntervalSince(lastDraw) >= 0.5 else { return }
        lastDraw = now
        write("\r\u{1B}[K" + Self.line(phase: phase, bytes: bytes, total: total, estimated: estimated, seconds: now.timeIntervalSince(phaseStart)))
        drew = true
    }

    public func finished() {
        if drew { write("\r\u{1B}[K") }
        drew = false
        phase = nil
        lastBytes = 0
    }

    /// The text of one progress line. An estimate shows `~` and stops at 99% until the phase ends.
    static func line(phase: String, bytes: UInt64, total: UInt64?, estimated: Bool, seconds: TimeInterval) -> String {
        var text = "\(phase): \(ByteCount.format(bytes))"
        if let total, total > 0 {
            let percent = min(Double(bytes) / Double(total) * 100, estimated ? 99 : 100)
            text += " of \(estimated ? "~" : "")\(ByteCount.format(total)) (\(estimated ? "~" : "")\(Int(percent))%)"
        }
        // Below a tenth of a second the rate is noise.
        if seconds >= 0.1 { text += " at \(ByteCount.format(UInt64(Double(bytes) / seconds)))/s" }
        return text
    }
}

/// Human-readable byte counts (binary units).
public enum ByteCount {
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}
