include $(sort $(wildcard $(BR2_EXTERNAL_CERANA_PATH)/package/*/*.mk))
