import Foundation
import Logging
import ProcessSignals
import Synchronization
import UTCTime

/// Where a run's AWS credentials come from, found in the AWS SDKs' order, and the credentials in use.
///
/// Keys in the environment or a credentials-file profile never change. Temporary credentials (a web
/// identity role on Kubernetes, an ECS task's, an EC2 instance profile's) last an hour to a few: they are
/// fetched again before they expire and at once when S3 answers `ExpiredToken`, so a backup or a WAL
/// archive that outlives them keeps going. A renewal that fails while the held credentials are still
/// valid keeps them (as the SDKs do). No credential or token is ever logged or put in a message.
public final class AWSCredentialSource: Sendable, CustomStringConvertible {
    /// A source of temporary credentials and where it is reached.
    enum Provider: Sendable {
        /// STS AssumeRoleWithWebIdentity with the token in `tokenFile` (EKS service accounts), read at each fetch.
        case webIdentity(roleARN: String, tokenFile: String, sessionName: String, endpoint: URL)
        /// The ECS/EKS-Pod-Identity container endpoint; its authorization header value from `tokenFile`
        /// (read at each fetch: the agent rotates it) or else `token`.
        case container(URL, tokenFile: String?, token: String?)
        /// EC2's instance metadata service, IMDSv2 (a session token first).
        case instanceMetadata(URL)
    }

    /// The metadata service could not be reached at all: on a machine outside EC2, "no instance profile".
    struct Unreachable: Error {
        let message: String
    }

    private struct State {
        var credentials: AWSCredentials?
        var expiry: Date?
        /// When to fetch again (nil: never, fixed keys).
        var refreshAt: Date?
        /// The last fetch's failure: threads that wait for the same renewal get it at once instead of each
        /// waiting out the same dead endpoint again.
        var failure: (at: Date, error: Error)?
    }

    /// Where the credentials come from, for `--print-config` and messages (never a credential).
    public let description: String
    private let provider: Provider?
    private let state: Mutex<State>
    private let transport: HTTPTransport
    private let logger = Logger(label: "dbrecovery.s3")

    /// Fixed keys (the environment's, a profile's): used as they are for the whole run.
    public init(fixed credentials: AWSCredentials, from origin: String = "fixed keys") {
        description = origin
        provider = nil
        state = Mutex(State(credentials: credentials))
        transport = HTTPTransport(idleTimeout: 2)
    }

    init(provider: Provider, description: String) {
        self.provider = provider
        self.description = description
        state = Mutex(State())
        // Short timeouts: the metadata services answer at once on the machine they serve. Their answers are
        // small; the link-local ones are reached directly, never through a proxy the environment names.
        let onThisMachine: Bool
        if case .webIdentity = provider { onThisMachine = false } else { onThisMachine = true }
        transport = HTTPTransport(idleTimeout: 2, totalTimeout: 10, maxIdleHandles: 1, direct: onThisMachine, maxBodyBytes: 1 << 20)
    }

    /// Whether the credentials can be fetched again (temporary ones).
    public var refreshes: Bool { provider != nil }

    /// The credentials to sign the next request with: the held ones, or fresh ones once they are near
    /// their expiry (a fifth of their lifetime before it, at most five minutes).
    ///
    /// - Throws: `StorageError` naming the provider (`.permissionDenied` when it refuses, `.invalidLocation`
    ///   for a set-up to fix); `InterruptedError` when a signal ends a fetch of the run's own work.
    public func current() throws -> AWSCredentials {
        try state.withLock { state in
            let now = Date()
            if let held = state.credentials, state.refreshAt.map({ now < $0 }) ?? true { return held }
            if let failure = state.failure, now.timeIntervalSince(failure.at) < 5, !Self.stillValid(state, at: now) { throw failure.error }
            do {
                return try fetch(into: &state)
            } catch let error where Self.stillValid(state, at: now) && !(error is InterruptedError) {
                // The held ones are good a while yet: keep them, and ask again shortly.
                logger.warning("could not renew the AWS credentials from the \(description) (\(error)); using the current ones until they expire")
                state.refreshAt = now.addingTimeInterval(15)
                return state.credentials ?? AWSCredentials(accessKeyID: "", secretAccessKey: "")
            }
        }
    }

    /// Fetches new credentials now (S3 said the ones in use have expired); fixed keys are returned as they are.
    public func renew(replacing stale: AWSCredentials) throws -> AWSCredentials {
        try state.withLock { state in
            guard provider != nil else { return state.credentials ?? stale }
            // Another thread renewed them since this request was signed.
            if let held = state.credentials, held != stale { return held }
            return try fetch(into: &state)
        }
    }

    /// Fetches the first credentials: how the chain tells whether this machine has an instance profile.
    /// A metadata service that cannot be reached at all throws `Unreachable` after one attempt (a machine
    /// outside EC2 should not wait long to be told); one that answers badly is retried like any fetch.
    func probe() throws {
        try state.withLock { state in _ = try fetch(into: &state, unreachableAtOnce: true) }
    }

    private static func stillValid(_ state: State, at now: Date) -> Bool {
        guard state.credentials != nil, let expiry = state.expiry else { return false }
        return expiry.timeIntervalSince(now) > 2
    }

    private func fetch(into state: inout State, unreachableAtOnce: Bool = false) throws -> AWSCredentials {
        guard let provider else { throw StorageError(.remote, object: description, message: "no credentials to fetch") }
        // A fetch begun after a signal is the clean-up's (an upload's abort needs credentials too): it still runs.
        let interruptible = !Interruption.isRequested
        var attempt = 1
        while true {
            let fetched = Date()
            do {
                let (credentials, expiry) = try Self.fetch(provider, description: description, transport: transport, interruptible: interruptible)
                state = State(credentials: credentials, expiry: expiry, refreshAt: Self.refreshTime(fetched: fetched, expiry: expiry))
                return credentials
            } catch let unreachable as Unreachable where unreachableAtOnce && attempt == 1 {
                throw unreachable
            } catch let error as Unreachable where attempt < 3 {
                logger.warning("could not reach the \(description) (\(error.message)); trying again")
            } catch let error as StorageError where error.kind == .remote && attempt < 3 {
                // A metadata service or STS that blinked: again after a pause, like an S3 request.
                logger.warning("\(error.message); trying again")
            } catch let unreachable as Unreachable {
                let error = StorageError(.remote, object: description, message: "could not get AWS credentials: \(unreachable.message)",
                                         hint: Self.hint(description))
                state.failure = (Date(), error)
                throw error
            } catch let error as InterruptedError {
                throw error
            } catch {
                state.failure = (Date(), error)
                throw error
            }
            try Interruption.pause(0.5 * Double(attempt), interruptible: interruptible)
            attempt += 1
        }
    }

    /// When credentials fetched at `fetched` and expiring at `expiry` are fetched again: a fifth of their
    /// lifetime before the expiry, at most five minutes before it. Without an expiry, after an hour; with one
    /// this machine's clock already puts past, in a minute (S3's `ExpiredToken` renews them sooner if need be).
    static func refreshTime(fetched: Date, expiry: Date?) -> Date {
        guard let expiry else { return fetched.addingTimeInterval(3600) }
        let lifetime = expiry.timeIntervalSince(fetched)
        return lifetime > 0 ? expiry.addingTimeInterval(-min(300, lifetime / 5)) : fetched.addingTimeInterval(60)
    }

    private static func hint(_ description: String) -> String {
        "check the \(description) set-up (role, trust policy, network), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    }

    private static func fetch(_ provider: Provider, description: String, transport: HTTPTransport,
                              interruptible: Bool) throws -> (AWSCredentials, Date?) {
        func failure(_ message: String, status: Int? = nil) -> StorageError {
            StorageError(status == 401 || status == 403 ? .permissionDenied : .remote, object: description,
                         message: "could not get AWS credentials: \(message)", hint: hint(description))
        }
        /// `absent`: statuses that mean there is no such service here (IMDS turned off), said like an unreachable one.
        func perform(_ method: String, _ url: URL, headers: [(name: String, value: String)] = [], body: Data? = nil,
                     absent: Set<Int> = []) throws -> Data {
            let response: HTTPResponse
            do {
                response = try transport.perform(HTTPRequest(method: method, url: url, headers: headers, body: body, interruptible: interruptible))
            } catch let error as HTTPTransportError {
                throw Unreachable(message: "\(method) \(url.absoluteString): \(error)")
            }
            if absent.contains(response.status) { throw Unreachable(message: "\(method) \(url.absoluteString) answered \(response.status)") }
            guard (200..<300).contains(response.status) else {
                // STS's error says what is wrong (an audience, an expired token); the metadata services' say nothing secret either.
                let error = XMLNode.parse(response.body)?.first("Error")
                let said = [error?.value("Code"), error?.value("Message")].compactMap { $0 }.joined(separator: ": ")
                throw failure("\(method) \(url.absoluteString) answered \(response.status)\(said.isEmpty ? "" : " " + said)", status: response.status)
            }
            return response.body
        }
        func setUp(_ what: String, _ file: String) -> StorageError {
            StorageError(.invalidLocation, object: description, message: "\(what) \(file) cannot be read (missing, empty, or not a file)",
                         hint: "mount the token file where it says, or unset the variable that names it")
        }
        switch provider {
        case let .webIdentity(roleARN, tokenFile, sessionName, endpoint):
            guard let token = readToken(tokenFile) else { throw setUp("the web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE)", tokenFile) }
            let form = [("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"), ("RoleArn", roleARN),
                        ("RoleSessionName", sessionName), ("WebIdentityToken", token)]
                .map { "\($0.0)=\(formEncode($0.1))" }.joined(separator: "&")
            let body = try perform("POST", endpoint, headers: [(name: "content-type", value: "application/x-www-form-urlencoded")], body: Data(form.utf8))
            guard let found = XMLNode.parse(body)?.first("Credentials"), let key = found.value("AccessKeyId"),
                  let secret = found.value("SecretAccessKey") else {
                throw failure("STS's answer holds no credentials")
            }
            return (AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: found.value("SessionToken")),
                    found.value("Expiration").flatMap(Timestamp.parse))
        case let .container(url, tokenFile, token):
            var authorization = token
            if let tokenFile {
                guard let read = readToken(tokenFile) else { throw setUp("the container authorization token file (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)", tokenFile) }
                authorization = read
            }
            return try credentials(fromJSON: perform("GET", url, headers: authorization.map { [(name: "authorization", value: $0)] } ?? []), failure: failure)
        case let .instanceMetadata(endpoint):
            let base = endpoint.absoluteString.hasSuffix("/") ? String(endpoint.absoluteString.dropLast()) : endpoint.absoluteString
            func url(_ path: String) throws -> URL {
                guard let url = URL(string: base + path) else { throw failure("\(base + path) is not a URL") }
                return url
            }
            let session = [(name: "x-aws-ec2-metadata-token",
                            value: String(decoding: try perform("PUT", try url("/latest/api/token"),
                                                                headers: [(name: "x-aws-ec2-metadata-token-ttl-seconds", value: "21600")],
                                                                absent: [403, 404, 405]), as: UTF8.self))]
            let roles = String(decoding: try perform("GET", try url("/latest/meta-data/iam/security-credentials/"), headers: session), as: UTF8.self)
            guard let role = roles.split(whereSeparator: \.isNewline).first.map(String.init), !role.isEmpty,
                  let encoded = role.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) else {
                throw failure("this instance has no IAM role (attach an instance profile)")
            }
            return try credentials(fromJSON: perform("GET", try url("/latest/meta-data/iam/security-credentials/" + encoded), headers: session),
                                   failure: failure)
        }
    }

    /// A token file's content, trimmed; nil when it cannot be read or is empty.
    private static func readToken(_ path: String) -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return token.isEmpty ? nil : token
    }

    /// The JSON the container endpoint and IMDS answer: AccessKeyId, SecretAccessKey, Token, Expiration.
    private static func credentials(fromJSON body: Data, failure: (String, Int?) -> StorageError) throws -> (AWSCredentials, Date?) {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              let key = object["AccessKeyId"] as? String, let secret = object["SecretAccessKey"] as? String else {
            throw failure("the answer holds no AccessKeyId and SecretAccessKey", nil)
        }
        return (AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: object["Token"] as? String),
                (object["Expiration"] as? String).flatMap(Timestamp.parse))
    }

    /// `application/x-www-form-urlencoded` value: everything but unreserved characters percent-encoded.
    private static func formEncode(_ text: String) -> String {
        let allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
