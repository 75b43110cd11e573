import Foundation
import ProcessSignals
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A child program (pg_dump, psql, pg_basebackup) started with `posix_spawn`, with pipes we
/// read and write ourselves so that nothing is buffered whole.
public final class ChildProcess {
    /// How one of the child's standard streams is connected.
    public enum Stream {
        case inherit
        case null
        case pipe
        case descriptor(Int32)
    }

    /// How the child ended.
    public struct Termination: Sendable {
        /// Exit status if it exited.
        public let exitCode: Int32?
        /// Signal number if a signal ended it.
        public let signal: Int32?
        /// Peak resident set size in KiB (`ru_maxrss`).
        public let maxResidentKilobytes: Int
        /// User plus system CPU time in seconds.
        public let cpuSeconds: Double

        public var succeeded: Bool { exitCode == 0 }

        public var description: String {
            if let exitCode { return "exited with status \(exitCode)" }
            if let signal { return "was killed by signal \(signal)" }
            return "ended"
        }
    }

    public let pid: pid_t
    public let executable: String
    /// Our end of the child's stdin, when `.pipe`.
    public private(set) var standardInput: Int32 = -1
    /// Our end of the child's stdout, when `.pipe`.
    public private(set) var standardOutput: Int32 = -1
    /// Our end of the child's stderr, when `.pipe`.
    public private(set) var standardError: Int32 = -1
    private var termination: Termination?
    /// Sends the child SIGTERM when a signal interrupts the run; removed before the child is reaped,
    /// so its PID is never signalled once it could belong to another process.
    private var interruptHook: InterruptHook?

    /// The repository's secrets in our environment: S3 credentials and the cipher key. No PostgreSQL
    /// tool needs them, and a child's environment can be read by its user in `/proc/PID/environ`
    /// (and by whatever the child runs in turn), so no child inherits them; a caller whose child
    /// must reach the repository (pg_ctl starting a server whose restore_command is `dbrestore
    /// wal-fetch`) hands them over explicitly in `environment`.
    public static let repositorySecrets: Set<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                                                        "AWS_CONTAINER_AUTHORIZATION_TOKEN", "DBRECOVERY_ENCRYPTION_KEY"]

    /// What a child started with `environment` and `removingEnvironment` sees: this process's
    /// environment (which every child inherits, as from a shell) less the removed names and less
    /// `repositorySecrets`, with `environment` over it.
    public static func environment(adding environment: [String: String], removing: Set<String> = []) -> [String: String] {
        var merged = ProcessInfo.processInfo.environment
        for name in removing.union(repositorySecrets) { merged.removeValue(forKey: name) }
        merged.merge(environment) { _, new in new }
        return merged
    }

    /// Starts a program.
    ///
    /// - Parameters:
    ///   - executable: absolute path.
    ///   - arguments: argv after argv[0]. Never put a password here: use `environment`.
    ///   - environment: added to (and overriding) the inherited environment; the only way a child gets
    ///     one of `repositorySecrets`.
    ///   - removingEnvironment: more names to drop from the inherited environment.
    /// - Throws: `RecoveryError` with `.toolFailed` if the program cannot be started.
    public init(executable: String, arguments: [String], environment: [String: String] = [:],
                removingEnvironment: Set<String> = [], stdin: Stream = .null, stdout: Stream = .inherit,
                stderr: Stream = .inherit) throws {
        self.executable = executable
        let merged = Self.environment(adding: environment, removing: removingEnvironment)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var childEnds: [Int32] = []
        var parentEnds: [Int32] = [-1, -1, -1]
        defer { childEnds.forEach { close($0) } }

        func connect(_ stream: Stream, to target: Int32, childReads: Bool) throws {
            switch stream {
            case .inherit:
                break
            case .null:
                posix_spawn_file_actions_addopen(&actions, target, "/dev/null", childReads ? O_RDONLY : O_WRONLY, 0)
            case .descriptor(let descriptor):
                posix_spawn_file_actions_adddup2(&actions, descriptor, target)
            case .pipe:
                var ends: [Int32] = [-1, -1]
                guard pipe(&ends) == 0 else {
                    throw RecoveryError(.toolFailed, "unable to create a pipe for \(executable): \(String(cString: strerror(errno)))",
                                        hint: "the process is out of file descriptors or memory (ulimit -n); run again when the system has recovered")
                }
                // Both ends close on exec in the child; dup2 onto 0/1/2 clears the flag for the child's copy.
                _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
                // Data pipes get 1 MiB (Linux F_SETPIPE_SZ = 1031; the default 64 KiB costs a context
                // switch per 64 KiB of a dump). Refused above /proc/sys/fs/pipe-max-size: harmless.
                if target != 2 { _ = fcntl(ends[0], 1031, Int32(1 << 20)) }
                let (childEnd, parentEnd) = childReads ? (ends[0], ends[1]) : (ends[1], ends[0])
                childEnds.append(childEnd)
                parentEnds[Int(target)] = parentEnd
                posix_spawn_file_actions_adddup2(&actions, childEnd, target)
            }
        }
        do {
            try connect(stdin, to: 0, childReads: true)
            try connect(stdout, to: 1, childReads: false)
            try connect(stderr, to: 2, childReads: false)
        } catch {
            parentEnds.filter { $0 >= 0 }.forEach { close($0) }
            throw error
        }

        // We ignore SIGPIPE ourselves (to see EPIPE); the child must get the default back.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var childPID: pid_t = 0
        let status = posix_spawn(&childPID, executable, &actions, &attributes, argv, envp)
        guard status == 0 else {
            parentEnds.filter { $0 >= 0 }.forEach { close($0) }
            let reason = String(cString: strerror(status))
            throw RecoveryError(.toolFailed, "unable to start \(executable): \(reason)",
                                hint: status == ENOENT ? "install the PostgreSQL client programs (apt-get install postgresql-client-15) or pass --pg-bin DIR" : nil)
        }
        pid = childPID
        // Forward an interruption: the child stops, our read of its output ends, and the run unwinds.
        let spawned = childPID
        interruptHook = Interruption.onInterrupt { kill(spawned, SIGTERM) }
        standardInput = parentEnds[0]
        standardOutput = parentEnds[1]
        standardError = parentEnds[2]
    }

    deinit {
        closeStandardInput()
        if standardOutput >= 0 { close(standardOutput) }
        if standardError >= 0 { close(standardError) }
        if termination == nil {
            kill(pid, SIGKILL)
            _ = waitForExit()
        }
    }

    /// Closes our end of the child's stdin, so it sees end of input.
    public func closeStandardInput() {
        if standardInput >= 0 { close(standardInput) }
        standardInput = -1
    }

    /// Sends a signal (if the child has not been reaped yet).
    public func send(_ signal: Int32) {
        if termination == nil { kill(pid, signal) }
    }

    /// Waits for the child to end and reaps it; later calls return the same value.
    @discardableResult
    public func waitForExit() -> Termination {
        if let termination { return termination }
        // Wait without reaping, drop the interrupt hook, then reap: until then the PID stays ours (a zombie).
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        interruptHook?.remove()
        interruptHook = nil
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        let low = status & 0x7f
        let cpu = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        let result = Termination(exitCode: low == 0 ? (status >> 8) & 0xff : nil,
                                 signal: low != 0 && low != 0x7f ? low : nil,
                                 maxResidentKilobytes: Int(usage.ru_maxrss), cpuSeconds: cpu)
        termination = result
        return result
    }

    /// Writes all of `bytes` to the child's stdin.
    ///
    /// - Throws: `RecoveryError(.toolFailed)` if the child stopped reading (EPIPE).
    public func writeToStandardInput(_ bytes: UnsafeRawBufferPointer) throws {
        guard var base = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let written = write(standardInput, base, remaining)
            if written < 0 {
                if errno == EINTR { continue }
                throw RecoveryError(.toolFailed, "\((executable as NSString).lastPathComponent) stopped reading its input: \(String(cString: strerror(errno)))",
                                    hint: "the program ended early; its own error message, above, says why")
            }
            remaining -= written
            base += written
        }
    }
}

/// Reads a child's stderr on a background thread and keeps the last few KiB for error messages
/// (and, for tests that wait for a line before acting, what has come so far).
public final class OutputCollector: Sendable {
    private let tail = Mutex<[UInt8]>([])
    private let limit: Int
    private let done = DispatchSemaphore(value: 0)
    private let reachedEnd = Mutex(false)

    /// Starts reading `descriptor` until end of file; takes ownership of nothing.
    public init(descriptor: Int32, limit: Int = 16 * 1024) {
        self.limit = limit
        guard descriptor >= 0 else {
            done.signal()
            return
        }
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                tail.withLock { tail in
                    tail.append(contentsOf: buffer[0..<count])
                    if tail.count > limit { tail.removeFirst(tail.count - limit) }
                }
            }
            reachedEnd.withLock { $0 = true }
            done.signal()
        }
    }

    /// What has been collected so far, as text, without waiting.
    public var soFar: String { tail.withLock { String(decoding: $0, as: UTF8.self) } }

    /// Whether the child closed its end (every byte is in `soFar`).
    public var ended: Bool { reachedEnd.withLock { $0 } }

    /// Waits for end of file and returns what was collected, as text.
    public func finish() -> String {
        done.wait()
        done.signal()
        return tail.withLock { String(decoding: $0, as: UTF8.self) }
    }

    /// The last non-empty line, for a one-line error message.
    public func lastLine() -> String? {
        finish().split(separator: "\n").last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }.map(String.init)
    }

    /// Lines that start with `ERROR:` or `FATAL:` (psql / pg_dump), or the last line.
    public func mostRelevantLine() -> String? {
        Self.mostRelevantLine(of: finish())
    }

    /// The first error line of a PostgreSQL program's stderr, or its last line, with the `detail:`
    /// lines that follow it carrying the server's own words: `PQgetCopyData() failed.` alone does not
    /// say the server ended the session ("terminating connection due to administrator command").
    /// The `Command was:` detail is left out (it repeats a statement the message already names).
    static func mostRelevantLine(of text: String) -> String? {
        let lines = text.split(separator: "\n").map(String.init)
        guard let index = lines.firstIndex(where: { $0.contains("ERROR:") || $0.contains("FATAL:") || $0.contains("error:") }) else { return lines.last }
        // PostgreSQL 15 and later print them as `detail:`, 14 as further `error:` lines.
        let details = lines[(index + 1)...].prefix { $0.contains(": detail: ") || $0.contains("Error message from server:") || $0.contains("The command was:") }
            .filter { !$0.contains("Command was:") && !$0.contains("command was:") }
            .map { $0.replacingOccurrences(of: #"^\S+: (detail|error): "#, with: "", options: .regularExpression)
                     .split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        return ([lines[index]] + details).joined(separator: " ")
    }
}
