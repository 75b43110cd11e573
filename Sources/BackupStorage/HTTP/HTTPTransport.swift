import CCurlShim
import Foundation
import ProcessSignals
import Synchronization

/// One HTTP request for `HTTPTransport`.
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: URL
    /// Sent as given, in this order; an empty value sends the header empty.
    public var headers: [(name: String, value: String)]
    /// nil sends no body (an empty one for PUT and POST).
    public var body: Data?
    /// A data transfer that a SIGINT/SIGTERM ends at once (`InterruptedError`), even mid-body;
    /// clean-up requests (aborts, lock releases) leave it false so that they still run after the signal.
    public var interruptible: Bool

    public init(method: String, url: URL, headers: [(name: String, value: String)] = [], body: Data? = nil, interruptible: Bool = false) {
        (self.method, self.url, self.headers, self.body, self.interruptible) = (method, url, headers, body, interruptible)
    }
}

/// An HTTP response with its body read whole.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Names lower-cased (HTTP header names are case-insensitive); a repeated header's values are
    /// joined with ", ".
    public var headers: [String: String]
    public var body: Data

    public init(status: Int, headers: [String: String], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// A request that got no complete answer: no connection, a dropped connection, a body cut short, a
/// timeout, a TLS failure. The message is libcurl's (it names the host, never a header).
public struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    /// libcurl's error code (CURLcode); 28 for a timeout.
    public let code: Int
    public let message: String

    public var description: String { "\(message) (curl error \(code))" }
}

/// HTTP over libcurl's easy interface, blocking the calling thread.
///
/// FoundationNetworking's URLSession wraps the same libcurl in a multi handle driven by dispatch
/// sources, which on Linux keeps about a core busy for as long as a request waits for its answer:
/// at WAN latency the CPU, not the network, bounded how many WAL segments went up at once. Here each
/// request is one `curl_easy_perform` that sleeps in poll(2) while it waits.
///
/// Easy handles are kept in a small pool: a handle keeps its connections (and TLS sessions) open for
/// the next request to the same server. Proxies come from the environment (`https_proxy`, `no_proxy`
/// …) as they did with URLSession, since neither sets one; redirects are not followed (an S3 redirect
/// is an error with a body that says where the bucket is); bodies are never decompressed.
public final class HTTPTransport: Sendable {
    /// Seconds without a byte sent or received (connecting included) before a request is abandoned:
    /// URLSession's request timeout, which let a big part upload take as long as it kept moving.
    public let idleTimeout: TimeInterval
    /// Seconds a request may take in all, or nil for no limit.
    public let totalTimeout: TimeInterval?
    /// Bytes per second a download (GET) or an upload (a request with a body other than POST) must keep
    /// up, averaged over `idleTimeout` seconds, or 0 for no floor: a server that trickles a byte a second
    /// resets the idle timer forever, and without a floor a 16 MiB segment would take days. Not for POST,
    /// nor for a request without a body: CompleteMultipartUpload and CopyObject may work for minutes, sending
    /// a space now and then to show they are alive.
    public let lowSpeedLimit: Int
    /// A PEM file of the CAs to trust instead of the system's, or nil.
    public let caFile: String?
    /// Connect straight to the host, past any proxy the environment names (`http_proxy` …): the metadata
    /// services are on this machine's link, and their tokens must not travel through a proxy in clear.
    public let direct: Bool
    /// The largest answer body read before the request fails (nil: no limit).
    public let maxBodyBytes: Int?
    private let maxIdleHandles: Int
    private let idle = Mutex<[EasyHandle]>([])

    /// libcurl's global set-up, once per process before its first handle (`static let` runs once, thread-safely).
    private static let initialized: Bool = CCurlShim_global_init() == CURLE_OK

    public init(idleTimeout: TimeInterval, totalTimeout: TimeInterval? = nil, lowSpeedLimit: Int = 0, caFile: String? = nil, maxIdleHandles: Int = 8,
                direct: Bool = false, maxBodyBytes: Int? = nil) {
        self.direct = direct
        self.maxBodyBytes = maxBodyBytes
        self.idleTimeout = idleTimeout
        self.totalTimeout = totalTimeout
        self.lowSpeedLimit = lowSpeedLimit
        self.caFile = caFile
        self.maxIdleHandles = maxIdleHandles
    }

    /// Sends one request and reads the whole answer, whatever its status.
    ///
    /// - Throws: `HTTPTransportError` when no complete answer came; `InterruptedError` when a signal
    ///   ended an interruptible request.
    public func perform(_ request: HTTPRequest) throws -> HTTPResponse {
        guard Self.initialized, let handle = idle.withLock({ $0.popLast() }) ?? EasyHandle() else {
            throw HTTPTransportError(code: Int(CURLE_FAILED_INIT.rawValue), message: "libcurl could not be initialised")
        }
        defer { idle.withLock { if $0.count < maxIdleHandles { $0.append(handle) } } }
        let transfer = Transfer(interruptible: request.interruptible, idleTimeout: idleTimeout, maxBodyBytes: maxBodyBytes)
        let (code, status) = try transfer.run(request, on: handle.raw, totalTimeout: totalTimeout,
                                              lowSpeedLimit: Self.measuresSpeed(request) ? lowSpeedLimit : 0, caFile: caFile, direct: direct)
        if transfer.tooLarge, let maxBodyBytes {
            throw HTTPTransportError(code: Int(CURLE_FILESIZE_EXCEEDED.rawValue), message: "the answer is larger than \(maxBodyBytes) bytes")
        }
        if transfer.interrupted { try Interruption.check() }
        if transfer.timedOut {
            throw HTTPTransportError(code: Int(CURLE_OPERATION_TIMEDOUT.rawValue),
                                     message: "no data sent or received for \(Self.seconds(idleTimeout)) s (timed out)")
        }
        guard code == CURLE_OK else {
            let detail = String(cString: transfer.errorBuffer)
            throw HTTPTransportError(code: Int(code.rawValue), message: detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail)
        }
        return HTTPResponse(status: status, headers: transfer.headers, body: transfer.body)
    }

    /// Whether the low-speed floor applies: a download, or an upload of a body (see `lowSpeedLimit`).
    static func measuresSpeed(_ request: HTTPRequest) -> Bool {
        request.method == "GET" || (request.method != "POST" && !(request.body?.isEmpty ?? true))
    }

    static func seconds(_ value: TimeInterval) -> String {
        value == value.rounded() ? String(Int(value)) : String(format: "%.1f", value)
    }
}

/// A libcurl easy handle; it keeps its connections open between requests.
// @unchecked: one thread at a time uses it, taken from the pool (under its lock) for one request, then given back.
private final class EasyHandle: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer

    init?() {
        guard let raw = curl_easy_init() else { return nil }
        self.raw = raw
    }

    deinit { curl_easy_cleanup(raw) }
}

/// The state of one request while libcurl runs it: the answer as it arrives, and what ends it early.
/// Its callbacks run on the thread that called `curl_easy_perform`, during that call.
private final class Transfer {
    let interruptible: Bool
    let idleTimeout: TimeInterval
    var body = Data()
    var headers: [String: String] = [:]
    var interrupted = false
    var timedOut = false
    /// The body outgrew `maxBodyBytes`: the transfer was ended there.
    var tooLarge = false
    let maxBodyBytes: Int?
    let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE))
    private var lastCounts: (curl_off_t, curl_off_t) = (-1, -1)
    private var lastActivity = ContinuousClock.now

    init(interruptible: Bool, idleTimeout: TimeInterval, maxBodyBytes: Int?) {
        self.maxBodyBytes = maxBodyBytes
        self.interruptible = interruptible
        self.idleTimeout = idleTimeout
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
    }

    deinit { errorBuffer.deallocate() }

    /// Sets the handle up for `request` (from scratch: `curl_easy_reset` keeps only the connections)
    /// and runs it. Returns libcurl's result and the answer's status.
    func run(_ request: HTTPRequest, on handle: UnsafeMutableRawPointer, totalTimeout: TimeInterval?, lowSpeedLimit: Int,
             caFile: String?, direct: Bool) throws -> (CURLcode, Int) {
        curl_easy_reset(handle)
        // Nothing of this request (its buffers, its callbacks' context) stays set on the pooled handle.
        defer { curl_easy_reset(handle) }
        let context = Unmanaged.passUnretained(self).toOpaque()
        var problems = [CURLcode]()
        func check(_ result: CURLcode) { if result != CURLE_OK { problems.append(result) } }
        check(CCurlShim_setopt_string(handle, CURLOPT_URL, request.url.absoluteString))
        check(CCurlShim_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https"))
        // The path as given: a signed request must not have its "./" or "../" segments squashed after signing.
        check(CCurlShim_setopt_long(handle, CURLOPT_PATH_AS_IS, 1))
        if let caFile { check(CCurlShim_setopt_string(handle, CURLOPT_CAINFO, caFile)) }
        if direct { check(CCurlShim_setopt_string(handle, CURLOPT_NOPROXY, "*")) }
        // No SIGALRM for resolver timeouts: several threads send requests at once.
        check(CCurlShim_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        check(CCurlShim_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer))
        check(CCurlShim_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int((idleTimeout * 1000).rounded(.up))))
        if lowSpeedLimit > 0 {
            // libcurl's own floor: under lowSpeedLimit bytes/s (its average of the last seconds) for the whole idle
            // timeout ends the transfer with CURLE_OPERATION_TIMEDOUT, which the caller retries like a timeout.
            check(CCurlShim_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, lowSpeedLimit))
            check(CCurlShim_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, max(1, Int(idleTimeout.rounded(.up)))))
        }
        if let totalTimeout { check(CCurlShim_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int((totalTimeout * 1000).rounded(.up)))) }
        // Larger buffers than the 16 KiB / 64 KiB defaults: fewer system calls per 16 MiB segment or part.
        check(CCurlShim_setopt_long(handle, CURLOPT_BUFFERSIZE, 128 * 1024))
        check(CCurlShim_setopt_long(handle, CURLOPT_UPLOAD_BUFFERSIZE, 256 * 1024))
        check(CCurlShim_setopt_write_function(handle, CURLOPT_WRITEFUNCTION, { data, size, count, context in
            guard let data, let context else { return 0 }
            let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
            if let limit = transfer.maxBodyBytes, transfer.body.count + size * count > limit {
                transfer.tooLarge = true
                return 0
            }
            data.withMemoryRebound(to: UInt8.self, capacity: size * count) { transfer.body.append($0, count: size * count) }
            return size * count
        }))
        check(CCurlShim_setopt_pointer(handle, CURLOPT_WRITEDATA, context))
        check(CCurlShim_setopt_write_function(handle, CURLOPT_HEADERFUNCTION, { data, size, count, context in
            guard let data, let context else { return 0 }
            let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
            transfer.received(headerLine: UnsafeRawBufferPointer(start: data, count: size * count))
            return size * count
        }))
        check(CCurlShim_setopt_pointer(handle, CURLOPT_HEADERDATA, context))
        check(CCurlShim_setopt_long(handle, CURLOPT_NOPROGRESS, 0))
        check(CCurlShim_setopt_xferinfo_function(handle, { context, _, downloaded, _, uploaded in
            guard let context else { return 0 }
            return Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue().proceeds(downloaded: downloaded, uploaded: uploaded) ? 0 : 1
        }))
        check(CCurlShim_setopt_pointer(handle, CURLOPT_XFERINFODATA, context))

        let sendsBody = request.body != nil || request.method == "PUT" || request.method == "POST"
        switch request.method {
        case "GET": check(CCurlShim_setopt_long(handle, CURLOPT_HTTPGET, 1))
        case "HEAD": check(CCurlShim_setopt_long(handle, CURLOPT_NOBODY, 1))
        case "POST": check(CCurlShim_setopt_long(handle, CURLOPT_POST, 1))
        default: check(CCurlShim_setopt_string(handle, CURLOPT_CUSTOMREQUEST, request.method))
        }
        // "Expect:" (empty) stops libcurl's `Expect: 100-continue` on bodies over 1 MiB, a round trip
        // (or a one-second wait) per part; "Content-Type:" stops the form encoding it would announce.
        var lines = request.headers.map { $0.value.isEmpty ? "\($0.name);" : "\($0.name): \($0.value)" } + ["Expect:"]
        if sendsBody && !request.headers.contains(where: { $0.name.lowercased() == "content-type" }) { lines.append("Content-Type:") }
        var list: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(list) }
        for line in lines {
            guard let longer = curl_slist_append(list, line) else { problems.append(CURLE_OUT_OF_MEMORY); break }
            list = longer
        }
        check(CCurlShim_setopt_pointer(handle, CURLOPT_HTTPHEADER, list))
        if let problem = problems.first {
            throw HTTPTransportError(code: Int(problem.rawValue), message: "libcurl refused an option: \(String(cString: curl_easy_strerror(problem)))")
        }
        lastActivity = .now
        let code = sendsBody ? (request.body ?? Data()).withUnsafeBytes { bytes in
            let result = CCurlShim_set_body(handle, bytes.baseAddress, curl_off_t(bytes.count))
            return result == CURLE_OK ? curl_easy_perform(handle) : result
        } : curl_easy_perform(handle)
        var status = 0
        _ = CCurlShim_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return (code, status)
    }

    /// One header line (or the status line that starts a response: headers of a `100 Continue`
    /// before it are dropped).
    func received(headerLine bytes: UnsafeRawBufferPointer) {
        lastActivity = .now
        let line = String(decoding: bytes, as: UTF8.self)
        if line.hasPrefix("HTTP/") {
            headers = [:]
            return
        }
        guard let colon = line.firstIndex(of: ":") else { return }
        let name = line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
        headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        if name == "content-length", let length = Int(value), length > 0 {
            body.reserveCapacity(min(length, 1 << 30))
        }
    }

    /// libcurl's progress call (at least once a second, bytes moving or not): false ends the transfer.
    func proceeds(downloaded: curl_off_t, uploaded: curl_off_t) -> Bool {
        if interruptible && Interruption.isRequested {
            interrupted = true
            return false
        }
        let now = ContinuousClock.now
        if (downloaded, uploaded) != lastCounts {
            lastCounts = (downloaded, uploaded)
            lastActivity = now
        } else if now - lastActivity >= .milliseconds(Int64((idleTimeout * 1000).rounded(.up))) {
            timedOut = true
            return false
        }
        return true
    }
}
