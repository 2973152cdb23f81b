// The etcd adapter's HTTP client (storage/src/http_client.h) against a scripted server on
// 127.0.0.1: bodies by length, by chunks (with extensions and trailers) and to the end of the
// connection, arriving in pieces; a kept-alive connection reused, and a request sent again when
// the server closed it; streams; answers that are not HTTP; the chunk decoder fed byte by byte
// and a table of malformed chunks.
#include "../../storage/src/http_client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "scripted_server.h"

namespace weft::storage {
namespace {

using namespace std::chrono_literals;

using test::ScriptedServer;

TEST(HttpConnection, ReadsABodyByLengthArrivingInPieces) {
  // Given
  ScriptedServer server([](int fd, int) {
    const std::optional<std::string> body = ScriptedServer::read_request(fd);
    EXPECT_EQ(body, "{\"key\":\"YQ==\"}");
    ScriptedServer::write(fd, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhel");
    std::this_thread::sleep_for(20ms);
    ScriptedServer::write(fd, "lo world");
    ScriptedServer::read_request(fd);  // until the client closes
  });
  HttpConnection connection(server.endpoint(), "test");
  // Expect
  Result<HttpResponse> response = connection.post("/v3/kv/range", "{\"key\":\"YQ==\"}", 2000);
  ASSERT_TRUE(response.ok()) << response.error().message;
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "hello world");
  connection.close();
}

TEST(HttpConnection, ReadsAChunkedBodyWithExtensionsAndTrailers) {
  // Given: etcd's errors come like this (a 4xx, chunked, with a gRPC trailer).
  ScriptedServer server([](int fd, int) {
    ScriptedServer::read_request(fd);
    ScriptedServer::write(fd, "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Trailer\r\n\r\n"
                              "5\r\nhello\r\n6;ext=1\r\n world\r\n");
    std::this_thread::sleep_for(20ms);
    ScriptedServer::write(fd, "0\r\nGrpc-Trailer: x\r\n\r\n");
    ScriptedServer::read_request(fd);
  });
  HttpConnection connection(server.endpoint(), "test");
  // Expect
  Result<HttpResponse> response = connection.post("/", "{}", 2000);
  ASSERT_TRUE(response.ok()) << response.error().message;
  EXPECT_EQ(response->status, 404);
  EXPECT_EQ(response->body, "hello world");
  connection.close();
}

TEST(HttpConnection, ReadsABodyToTheEndOfTheConnection) {
  // Given
  ScriptedServer server([](int fd, int) {
    ScriptedServer::read_request(fd);
    ScriptedServer::write(fd, "HTTP/1.0 200 OK\r\n\r\nto the end");
  });
  HttpConnection connection(server.endpoint(), "test");
  // Expect
  Result<HttpResponse> response = connection.post("/", "{}", 2000);
  ASSERT_TRUE(response.ok()) << response.error().message;
  EXPECT_EQ(response->body, "to the end");
  EXPECT_EQ(connection.fd(), -1);  // closed: nothing more can come on it
}

TEST(HttpConnection, ReusesAKeptAliveConnection) {
  // Given
  ScriptedServer server([](int fd, int) {
    while (ScriptedServer::read_request(fd)) ScriptedServer::write(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  });
  HttpConnection connection(server.endpoint(), "test");
  // Expect
  for (int i = 0; i < 3; ++i) {
    Result<HttpResponse> response = connection.post("/", "{}", 2000);
    ASSERT_TRUE(response.ok()) << response.error().message;
    EXPECT_EQ(response->body, "ok");
  }
  connection.close();
  EXPECT_EQ(server.connections(), 1);
}

TEST(HttpConnection, SendsARequestAgainWhenTheServerClosedTheKeptConnection) {
  // Given: the first connection answers once, then closes on the next request without a word.
  ScriptedServer server([](int fd, int connection) {
    ScriptedServer::read_request(fd);
    ScriptedServer::write(fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst");
    if (connection == 0) {
      ScriptedServer::read_request(fd);
      return;
    }
    ScriptedServer::read_request(fd);
  });
  HttpConnection connection(server.endpoint(), "test");
  ASSERT_TRUE(connection.post("/", "{}", 2000).ok());
  // Expect
  Result<HttpResponse> again = connection.post("/", "{}", 2000);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->body, "first");
  connection.close();
  EXPECT_EQ(server.connections(), 2);
}

TEST(HttpConnection, AnswerThatIsNotHttpIsCorrupt) {
  // Given
  ScriptedServer server([](int fd, int) {
    ScriptedServer::read_request(fd);
    ScriptedServer::write(fd, "SSH-2.0-OpenSSH\r\n\r\n");
    ScriptedServer::read_request(fd);
  });
  HttpConnection connection(server.endpoint(), "test");
  // Expect
  Result<HttpResponse> response = connection.post("/", "{}", 2000);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().code, Errc::kCorrupt) << response.error().message;
}

TEST(HttpConnection, AnswerCutOffIsUnavailable) {
  // Given
  ScriptedServer server([](int fd, int) {
    ScriptedServer::read_request(fd);
    ScriptedServer::write(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
  });
  HttpConnection connection(server.endpoint(), "test");
  // Expect
  Result<HttpResponse> response = connection.post("/", "{}", 2000);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().code, Errc::kUnavailable) << response.error().message;
  EXPECT_NE(response.error().message.find("test: "), std::string::npos) << response.error().message;
}

TEST(HttpConnection, ReadsAStreamAsItComes) {
  // Given
  std::atomic<bool> second{false};
  ScriptedServer server([&](int fd, int) {
    ScriptedServer::read_request(fd);
    ScriptedServer::write(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\na\n\r\n");
    while (!second.load()) std::this_thread::sleep_for(5ms);
    ScriptedServer::write(fd, "4\r\nbc\nd\r\n");
    ScriptedServer::write(fd, "0\r\n\r\n");
    ScriptedServer::read_request(fd);
  });
  HttpConnection connection(server.endpoint(), "test");
  Result<HttpResponse> started = connection.post_stream("/v3/watch", "{}", 2000);
  ASSERT_TRUE(started.ok()) << started.error().message;
  ASSERT_EQ(started->status, 200);
  // Expect: the first chunk, then nothing for a while (no error), then the rest and the end.
  std::string text;
  Result<bool> open = connection.read_stream(text, 2000);
  ASSERT_TRUE(open.ok() && *open);
  EXPECT_EQ(text, "a\n");
  open = connection.read_stream(text, 50);
  ASSERT_TRUE(open.ok() && *open);
  EXPECT_EQ(text, "a\n");
  second.store(true);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (open.ok() && *open && std::chrono::steady_clock::now() < deadline) open = connection.read_stream(text, 100);
  ASSERT_TRUE(open.ok()) << open.error().message;
  EXPECT_FALSE(*open);
  EXPECT_EQ(text, "a\nbc\nd");
}

TEST(ChunkedDecoder, DecodesTheSameFedWholeOrByteByByte) {
  // Given
  const std::string body = "3\r\nabc\r\n1A\r\n" + std::string(26, 'x') + "\r\n0\r\nT: 1\r\n\r\n";
  ChunkedDecoder whole;
  std::string in = body, out;
  ASSERT_TRUE(whole.feed(in, out).ok());
  // Expect
  EXPECT_TRUE(whole.done());
  EXPECT_TRUE(in.empty());
  EXPECT_EQ(out, "abc" + std::string(26, 'x'));
  ChunkedDecoder bytewise;
  std::string pending, out2;
  for (const char c : body) {
    pending.push_back(c);
    ASSERT_TRUE(bytewise.feed(pending, out2).ok());
  }
  EXPECT_TRUE(bytewise.done());
  EXPECT_EQ(out2, out);
}

TEST(ChunkedDecoder, RefusesMalformedChunks) {
  const char* cases[] = {
      "zz\r\n",                 // not hex
      "\r\n",                   // no size
      "-1\r\n",                 // negative
      "3\r\nabcXY",             // data not followed by CRLF
      "FFFFFFFFFFFFFFFF\r\n",   // absurd size
  };
  for (const char* text : cases) {
    ChunkedDecoder decoder;
    std::string in = text, out;
    Result<void> fed = decoder.feed(in, out);
    ASSERT_FALSE(fed.ok()) << text;
    EXPECT_EQ(fed.error().code, Errc::kCorrupt) << text;
  }
}

}  // namespace
}  // namespace weft::storage
