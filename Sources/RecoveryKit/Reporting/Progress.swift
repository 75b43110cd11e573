import Foundation

/// Receives progress of long work: bytes moved so far. Commands draw it on a terminal.
public protocol ProgressObserver: AnyObject {
    func progress(phase: String, bytes: UInt64)
    func finished()
}

/// Draws `phase: 1.2 GiB at 85.0 MiB/s` on stderr, at most twice a second, only on a terminal.
public final class TerminalProgress: ProgressObserver {
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var drew = false

    /// A progress line if stderr is a terminal and not silenced, else nil.
    public static func ifTerminal(quiet: Bool) -> TerminalProgress? {
        (!quiet && isatty(2) == 1) ? TerminalProgress() : nil
    }

    public func progress(phase: String, bytes: UInt64) {
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.5 else { return }
        lastDraw = now
        let seconds = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(bytes) / seconds
        FileHandle.standardError.write(Data("\r\u{1B}[K\(phase): \(ByteCount.format(bytes)) at \(ByteCount.format(UInt64(rate)))/s".utf8))
        drew = true
    }

    public func finished() {
        if drew { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
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
