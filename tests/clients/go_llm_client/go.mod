module tokentap.test/go_llm_client

go 1.17
